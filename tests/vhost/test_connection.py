"""The connection over a real unix socket, against the front-end test driver
(tests/frontend: QEMU's side and the guest's), with a trivial echo device."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import uvloop

from tests.frontend import vhost_msg as vm
from tests.frontend.frontend import Frontend, VhostNack
from tests.frontend.vring import F_NEXT, F_WRITE, Buf
from virtiofsd_nydus.errors import LocalError
from virtiofsd_nydus.vhost import message as m
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
    def __init__(
        self,
        path: Path | None,
        device: VirtioDevice,
        reconnect: bool = False,
        use_uvloop: bool = False,
        fd: int | None = None,
    ) -> None:
        self.listener = listen(str(path) if path else None, fd)
        self.use_uvloop = use_uvloop
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

        loop = uvloop.new_event_loop() if self.use_uvloop else asyncio.new_event_loop()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main())
        loop.close()
        self.done.set()

    def stop(self) -> None:
        if self._loop is not None and self._task is not None and not self.done.is_set():
            self._loop.call_soon_threadsafe(self._task.cancel)
        assert self.done.wait(10)
        self.listener.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "vhost.sock"


@pytest.fixture(params=["asyncio", "uvloop"])
def echo(
    sock_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Frontend, Echo, Server]]:
    dev = Echo()
    server = Server(sock_path, dev, use_uvloop=request.param == "uvloop")
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


def test_inherited_listening_fd(tmp_path: Path) -> None:
    """Kata's Go runtime passes an already listening socket as --fd."""
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(str(tmp_path / "kata.sock"))
    lsock.listen(1)
    server = Server(None, Echo(), fd=os.dup(lsock.fileno()))
    lsock.close()
    with Frontend(str(tmp_path / "kata.sock"), mem_size=8 << 20, queue_size=64) as fe:
        assert roundtrip(fe, 1, b"kata") == b"atak"
    server.stop()


def test_a_fd_that_is_not_listening_is_refused() -> None:
    a, b = socket.socketpair()
    with pytest.raises(LocalError, match="not a listening unix socket"):
        listen(fd=os.dup(a.fileno()))
    a.close()
    b.close()


def test_memory_replaced_and_hot_added_while_rings_run(sock_path: Path) -> None:
    server = Server(sock_path, Echo())
    with Frontend(str(sock_path), mem_size=8 << 20, queue_size=64) as fe:
        assert roundtrip(fe, 1, b"before") == b"erofeb"
        region = fe.add_region(1 << 20)  # no ADD_MEM_REG wanted: a whole new SET_MEM_TABLE
        q = fe.queues[1]
        src = fe.mem.alloc(8, 64, region)
        dst = fe.mem.alloc(8, 64, region)
        fe.mem.write(src, b"hotplug!")
        head = q.ring.add_chain([Buf(src, 8), Buf(dst, 8, True)])
        q.submit([head])
        assert q.wait_used(1)
        assert q.ring.pop_used() == [(head, 8)]
        q.ring.free_chain(head)
        assert fe.mem.read(dst, 8) == b"!gulptoh"
        assert roundtrip(fe, 1, b"after") == b"retfa"
    server.stop()


def test_region_removed_while_rings_run(sock_path: Path) -> None:
    server = Server(sock_path, Echo())
    with Frontend(str(sock_path), mem_size=8 << 20, queue_size=64, add_mem_reg=True) as fe:
        region = fe.add_region(1 << 20)
        fe.remove_region(region)
        assert roundtrip(fe, 1, b"still") == b"llits"
    server.stop()


def test_without_event_idx(sock_path: Path) -> None:
    server = Server(sock_path, Echo())
    with Frontend(
        str(sock_path), mem_size=8 << 20, queue_size=64, event_idx=False, indirect=False
    ) as fe:
        assert not fe.event_idx
        for i in range(70):
            assert roundtrip(fe, 1, bytes([i]) * 3) == bytes([i]) * 3
    server.stop()


def raw_connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.settimeout(10)
    return sock


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "back-end hung up"
        data += chunk
    return data


def test_header_split_across_writes(sock_path: Path) -> None:
    server = Server(sock_path, Echo())
    sock = raw_connect(sock_path)
    wire = m.encode(m.Request.GET_QUEUE_NUM)
    sock.sendall(wire[:5])
    sock.sendall(wire[5:])
    assert recv_exact(sock, 20) == m.encode_reply(m.Request.GET_QUEUE_NUM, m.U64(2).pack())
    sock.close()
    server.stop()


def test_oversized_payload_hangs_up(sock_path: Path) -> None:
    server = Server(sock_path, Echo())
    sock = raw_connect(sock_path)
    sock.sendall(m.Header(m.Request.SET_FEATURES, m.VERSION, 1 << 20).pack())
    assert sock.recv(1) == b""  # closed, no reply
    sock.close()
    assert server.done.wait(10)
    server.stop()


def test_fds_of_failed_messages_are_closed(sock_path: Path) -> None:
    server = Server(sock_path, Echo())
    sock = raw_connect(sock_path)
    r, w = os.pipe()
    socket.send_fds(sock, [m.encode(99, b"", m.VERSION)], [w])
    os.close(w)
    sock.sendall(m.encode(m.Request.GET_QUEUE_NUM))
    recv_exact(sock, 20)  # by now the unknown request was handled
    assert os.read(r, 1) == b""  # EOF: the back-end's copy of the write end is closed
    os.close(r)
    sock.close()
    server.stop()


class Faulty(Echo):
    """Answers the first chain of each batch, then raises."""

    def handle(self, queue: Virtqueue, chains: Sequence[Chain]) -> None:
        self._answer(queue, chains[0])
        raise RuntimeError("device bug")


def test_device_exception_completes_the_rest(sock_path: Path) -> None:
    server = Server(sock_path, Faulty())
    with Frontend(str(sock_path), mem_size=8 << 20, queue_size=64) as fe:
        assert roundtrip(fe, 1, b"ab") == b"ba"
        q = fe.queues[1]
        src, dst = fe.mem.alloc(4), fe.mem.alloc(4)
        heads = [q.ring.add_chain([Buf(src, 4), Buf(dst, 4, True)]) for _ in range(3)]
        q.submit(heads)
        assert q.wait_used(3)
        assert sorted(q.ring.pop_used()) == sorted([(heads[0], 4), (heads[1], 0), (heads[2], 0)])
        assert fe.stop_queue(1) == 4  # nothing left in flight
    server.stop()


def test_disabled_ring_is_not_served_until_enabled(sock_path: Path) -> None:
    server = Server(sock_path, Echo())
    with Frontend(str(sock_path), mem_size=8 << 20, queue_size=64) as fe:
        assert roundtrip(fe, 1, b"on") == b"no"
        fe.enable_queue(1, False)
        q = fe.queues[1]
        src, dst = fe.mem.alloc(4), fe.mem.alloc(4)
        fe.mem.write(src, b"wait")
        head = q.ring.add_chain([Buf(src, 4), Buf(dst, 4, True)])
        q.submit([head])
        q.kick()
        assert roundtrip(fe, 0, b"q0") == b"0q"  # the other queue is served meanwhile
        assert q.ring.pending_used() == 0
        # Stopped while disabled: the pending chain was never popped.
        qi, base = vm.reply_vring_state(fe.call(vm.Req.GET_VRING_BASE, vm.vring_state(1, 0)))
        assert (qi, base) == (1, 1)
        fe.restart_queue(1, base)  # set up again and enabled: now it is served
        assert q.wait_used(1)
        assert q.ring.pop_used() == [(head, 4)]
        assert fe.mem.read(dst, 4) == b"tiaw"
    server.stop()
