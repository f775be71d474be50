"""The connection over a real unix socket, against the front-end test driver
(tests/frontend: QEMU's side and the guest's), with a trivial echo device."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.frontend import vhost_msg as vm
from tests.frontend.frontend import Frontend, VhostNack
from tests.frontend.vring import F_NEXT, F_WRITE, Buf
from virtiofsd_nydus.vhost.connection import Connection, listen, serve
from virtiofsd_nydus.vhost.device import VirtioDevice
from virtiofsd_nydus.vhost.vring import Chain, Virtqueue


class Echo(VirtioDevice):
    """Replies with the request bytes reversed; optionally answers on the next tick."""

    num_queues = 2

    def __init__(self, deferred: bool = False) -> None:
        self.deferred = deferred
        self.handled = 0
        self.resets = 0

    def handle(self, queue: Virtqueue, chains: Sequence[Chain]) -> None:
        for chain in chains:
            self.handled += 1
            if self.deferred:
                asyncio.get_running_loop().call_soon(self._answer, queue, chain)
            else:
                self._answer(queue, chain)

    @staticmethod
    def _answer(queue: Virtqueue, chain: Chain) -> None:
        queue.complete(chain, chain.write(chain.read()[::-1]))

    def reset(self) -> None:
        self.resets += 1


class Server:
    def __init__(self, path: Path, device: VirtioDevice, reconnect: bool = False) -> None:
        self.listener = listen(str(path))
        self.device = device
        self.conns: list[Connection] = []
        self.done = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._run, args=(reconnect,), daemon=True)
        self.thread.start()

    def _run(self, reconnect: bool) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()  # type: ignore[assignment]
            await serve(
                self.device, self.listener, reconnect=reconnect, on_connection=self.conns.append
            )

        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(main())
        self.done.set()

    def stop(self) -> None:
        if self._loop is not None and self._task is not None and not self.done.is_set():
            self._loop.call_soon_threadsafe(self._task.cancel)
        assert self.done.wait(10)
        self.listener.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "vhost.sock"


@pytest.fixture
def echo(sock_path: Path) -> Iterator[tuple[Frontend, Echo, Server]]:
    dev = Echo()
    server = Server(sock_path, dev)
    fe = Frontend(str(sock_path), mem_size=8 << 20, queue_size=64)
    fe.start()
    yield fe, dev, server
    fe.close()
    server.stop()


def roundtrip(fe: Frontend, qi: int, payload: bytes, indirect: bool = False) -> bytes:
    q = fe.queues[qi]
    src = fe.mem.alloc(len(payload))
    dst = fe.mem.alloc(len(payload))
    fe.mem.write(src, payload)
    bufs = [Buf(src, len(payload)), Buf(dst, len(payload), writable=True)]
    head = q.ring.add_indirect(bufs) if indirect else q.ring.add_chain(bufs)
    q.submit([head])
    assert q.wait_used(1)
    [(used_head, length)] = q.ring.pop_used()
    q.ring.free_chain(used_head)
    assert used_head == head
    return fe.mem.read(dst, length)


def test_echo_over_a_real_socket(echo: tuple[Frontend, Echo, Server]) -> None:
    fe, dev, _ = echo
    assert fe.neg.num_queues == 2 and fe.event_idx and fe.indirect
    assert roundtrip(fe, 1, b"hello, ring") == b"gnir ,olleh"
    assert roundtrip(fe, 0, b"abc", indirect=True) == b"cba"
    for i in range(100):  # wraps the 64-entry ring
        data = i.to_bytes(2, "little") * 3
        assert roundtrip(fe, 1, data) == data[::-1]
    assert dev.handled == 102


def test_stop_and_restart_ring(echo: tuple[Frontend, Echo, Server]) -> None:
    fe, _, _ = echo
    assert roundtrip(fe, 1, b"12") == b"21"
    assert fe.stop_queue(1) == 1
    fe.restart_queue(1, 1)
    assert roundtrip(fe, 1, b"34") == b"43"
    assert fe.stop_queue(1) == 2


def test_bad_messages_fail_alone(echo: tuple[Frontend, Echo, Server]) -> None:
    fe, _, _ = echo
    with pytest.raises(VhostNack):
        fe.send(99)
    with pytest.raises(VhostNack):
        fe.send(vm.Req.SET_VRING_NUM, vm.vring_state(7, 64))
    r, w = socket.socketpair()
    with pytest.raises(VhostNack):
        fe.send(vm.Req.SET_OWNER, b"", [r.fileno(), w.fileno()])  # fds where none belong
    r.close()
    w.close()
    assert fe.alive()
    assert roundtrip(fe, 1, b"still here") == b"ereh llits"


def test_broken_chain_breaks_only_its_queue(echo: tuple[Frontend, Echo, Server]) -> None:
    fe, _, _ = echo
    q = fe.queues[1]
    a, b = q.ring.take(2)
    buf = fe.mem.alloc(64)
    q.ring.set_desc(a, buf, 8, F_NEXT, b)
    q.ring.set_desc(b, buf + 8, 8, F_NEXT | F_WRITE, a)  # a loop
    q.submit([a])
    assert not q.wait_used(1, timeout=0.3)
    assert fe.alive()
    assert roundtrip(fe, 0, b"other queue") == b"eueuq rehto"
    # GET_VRING_BASE on the broken queue still answers (nothing in flight).
    assert fe.stop_queue(1) == 0


def test_get_vring_base_waits_for_in_flight_requests(sock_path: Path) -> None:
    dev = Echo(deferred=True)
    server = Server(sock_path, dev)
    with Frontend(str(sock_path), mem_size=8 << 20, queue_size=64) as fe:
        q = fe.queues[1]
        src, dst = fe.mem.alloc(16), fe.mem.alloc(16)
        fe.mem.write(src, b"0123456789abcdef")
        heads = [q.ring.add_chain([Buf(src, 16), Buf(dst, 16, True)]) for _ in range(3)]
        q.submit(heads)
        # The reply comes only after all three were answered.
        assert fe.stop_queue(1) == 3
        assert q.ring.pending_used() == 3
    server.stop()
    assert dev.resets >= 1


def test_reconnect_mode_serves_the_next_front_end(sock_path: Path) -> None:
    dev = Echo()
    server = Server(sock_path, dev, reconnect=True)
    for _ in range(2):
        with Frontend(str(sock_path), mem_size=8 << 20, queue_size=64, add_mem_reg=True) as fe:
            assert roundtrip(fe, 1, b"xy") == b"yx"
    assert len(server.conns) == 2
    assert not server.done.is_set()
    server.stop()
