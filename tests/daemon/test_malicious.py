"""A malicious guest (bad descriptor chains) and a confused front-end (garbage vhost-user
messages) against our daemon: an error reply or a broken queue, never a crash, a hang or a
write outside the guest's writable buffers. Other queues, and the next connection
(--reconnect), keep working."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.frontend import fuse_abi as fa
from tests.frontend import vhost_msg as vm
from tests.frontend.client import FuseClient
from tests.frontend.frontend import Frontend, VhostNack
from tests.frontend.fuzz import Outcome, RawQueue, raw_message
from tests.frontend.vring import F_INDIRECT, F_NEXT, F_WRITE
from tests.vm.process import Daemon

GETATTR = fa.request(fa.Op.GETATTR, 7, fa.ROOT_ID, fa.getattr_in())
CANARY = 0xA5
GUARD = 4096

Connect = Callable[..., Frontend]


class Rig:
    """A started front-end on the module's daemon, a FUSE client, raw access to queue 1."""

    def __init__(self, connect: Connect) -> None:
        self.fe = connect(timeout=2.0, request_queues=2)
        self.fs = FuseClient(self.fe, timeout=2.0)
        self.fs.init()
        self.rq = RawQueue(self.fe, 1)
        self.guarded: list[tuple[int, int]] = []  # (start, length) that must stay CANARY

    def out_buffer(self, size: int = 120) -> int:
        """A writable buffer with canary pages on both sides."""
        base = self.fe.mem.alloc(GUARD + size + GUARD, 4096)
        self.fe.mem.write(base, bytes([CANARY]) * (GUARD + size + GUARD))
        self.guarded += [(base, GUARD), (base + GUARD + size, GUARD)]
        return base + GUARD

    def run(self, head: int, out: int | None, timeout: float = 2.0) -> Outcome:
        self.rq.submit(head)
        seen = self.rq.observe(head, out, timeout)
        assert seen.outcome is not Outcome.DIED, "the daemon hung up"
        if seen.outcome is Outcome.REPLIED:  # only shapes a lenient server may accept
            pass
        return seen.outcome

    def check_survived(self, queue_may_break: bool = True) -> None:
        for start, length in self.guarded:
            assert self.fe.mem.read(start, length) == bytes([CANARY]) * length, "wrote outside"
        assert self.fe.alive()
        other = RawQueue(self.fe, 2)
        assert other.probe(self.fs), "another request queue stopped working"
        if not queue_may_break:
            assert self.rq.probe(self.fs)


@pytest.fixture
def rig(connect: Connect) -> Rig:
    return Rig(connect)


def _fresh_connection_works(served: Daemon, old: Frontend | None = None) -> None:
    """Hang up OLD (the daemon serves one front-end at a time), then connect anew."""
    if old is not None:
        old.close()
    fe = Frontend(str(served.socket_path), timeout=5.0).start()
    try:
        fs = FuseClient(fe)
        fs.init()
        assert fs.lookup(fa.ROOT_ID, b"hello.txt").attr.size > 0
    finally:
        fe.close()


def _two(rig: Rig) -> tuple[int, int]:
    a, b = rig.rq.descs(2)
    return a, b


def test_descriptor_loop(rig: Rig, served: Daemon) -> None:
    a, b = _two(rig)
    out = rig.out_buffer()
    rig.rq.set(a, rig.rq.buffer(GETATTR), len(GETATTR), F_NEXT, b)
    rig.rq.set(b, out, 120, F_WRITE | F_NEXT, b)  # b -> b forever
    assert rig.run(a, out) in (Outcome.ERROR, Outcome.NO_REPLY, Outcome.CONSUMED, Outcome.REPLIED)
    rig.check_survived()
    _fresh_connection_works(served, rig.fe)


def test_head_index_past_the_table(rig: Rig, served: Daemon) -> None:
    head = rig.fe.queues[1].ring.size + 5
    rig.rq.submit(head)
    seen = rig.rq.observe(head, None, timeout=1.0)
    assert seen.outcome is not Outcome.DIED
    rig.check_survived()
    _fresh_connection_works(served, rig.fe)


@pytest.mark.parametrize(
    "shape",
    [
        "write-outside-memory",
        "read-outside-memory",
        "address-wraps",
        "writable-first",
        "no-writable-part",
        "reply-buffer-too-small",
        "nested-indirect",
        "oversize-indirect",
        "indirect-len-not-16",
        "indirect-outside-memory",
        "indirect-with-next",
        "chain-past-queue-size",
        "lying-in-len-long",
        "lying-in-len-short",
        "zero-length-descriptors",
    ],
)
def test_malformed_chain(rig: Rig, served: Daemon, shape: str) -> None:
    rq = rig.rq
    inp = rq.buffer(GETATTR)
    out = rig.out_buffer()
    head, nxt = _two(rig)
    bad_len = len(GETATTR)
    if shape == "write-outside-memory":
        rq.set(head, inp, len(GETATTR), F_NEXT, nxt)
        rq.set(nxt, 1 << 40, 120, F_WRITE)
    elif shape == "read-outside-memory":
        rq.set(head, 1 << 40, len(GETATTR), F_NEXT, nxt)
        rq.set(nxt, out, 120, F_WRITE)
    elif shape == "address-wraps":
        rq.set(head, inp, len(GETATTR), F_NEXT, nxt)
        rq.set(nxt, (1 << 64) - 16, 120, F_WRITE)
    elif shape == "writable-first":
        rq.set(head, out, 120, F_WRITE | F_NEXT, nxt)
        rq.set(nxt, inp, len(GETATTR))
    elif shape == "no-writable-part":
        rq.set(head, inp, len(GETATTR))
    elif shape == "reply-buffer-too-small":
        rq.set(head, inp, len(GETATTR), F_NEXT, nxt)
        rq.set(nxt, out, 20, F_WRITE)  # a GETATTR reply needs 120
    elif shape == "lying-in-len-long":  # in_header.len claims 4000 bytes; 56 are there
        lie = fa.IN_HEADER.pack(4000, fa.Op.GETATTR, 7, 1, 0, 0, 0, 0, 0) + fa.getattr_in()
        rq.set(head, rq.buffer(lie), len(lie), F_NEXT, nxt)
        rq.set(nxt, out, 120, F_WRITE)
    elif shape == "lying-in-len-short":  # claims 8 bytes, less than its own header
        lie = fa.IN_HEADER.pack(8, fa.Op.GETATTR, 7, 1, 0, 0, 0, 0, 0) + fa.getattr_in()
        rq.set(head, rq.buffer(lie), len(lie), F_NEXT, nxt)
        rq.set(nxt, out, 120, F_WRITE)
    elif shape == "zero-length-descriptors":
        rq.set(head, inp, 0, F_NEXT, nxt)
        rq.set(nxt, out, 0, F_WRITE)
    elif shape == "chain-past-queue-size":  # every free descriptor in one cycle
        ds = [head, nxt, *rq.descs(len(rq.ring.free) - 4)]
        rq.set(head, inp, len(GETATTR), F_NEXT, ds[1])
        for k in range(1, len(ds)):
            rq.set(ds[k], out + (k - 1) % 120, 1, F_WRITE | F_NEXT, ds[(k + 1) % len(ds)])
    else:
        good = [(inp, bad_len, F_NEXT, 1), (out, 120, F_WRITE, 0)]
        if shape == "nested-indirect":
            inner = rq.table(good)
            rq.set(head, rq.table([(inner, 32, F_INDIRECT, 0)]), 16, F_INDIRECT)
        elif shape == "oversize-indirect":
            rq.set(head, rq.table(good), 16 * 100_000, F_INDIRECT)
        elif shape == "indirect-len-not-16":
            rq.set(head, rq.table(good), 24, F_INDIRECT)
        elif shape == "indirect-outside-memory":
            rq.set(head, 1 << 40, 32, F_INDIRECT)
        else:  # INDIRECT together with NEXT
            rq.set(head, rq.table(good), 32, F_INDIRECT | F_NEXT, nxt)
            rq.set(nxt, out, 120, F_WRITE)
    outcome = rig.run(head, out)
    if outcome is Outcome.REPLIED:
        # Accepting a shape is only fine if the reply is right and fits the buffer.
        assert fa.out_header(rig.fe.mem.read(out, 16)).unique == 7
    rig.check_survived()
    _fresh_connection_works(served, rig.fe)


def test_many_bad_chains_then_good_ones_on_a_fresh_queue(rig: Rig, served: Daemon) -> None:
    for _ in range(20):
        [h] = rig.rq.descs(1)
        rig.rq.set(h, 1 << 40, 4096, F_INDIRECT)
        rig.rq.submit(h)
    rig.rq.observe(-1, None, timeout=0.5)
    rig.check_survived()
    _fresh_connection_works(served, rig.fe)


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize(
    "request_,payload,fds",
    [
        (999, b"\0" * 8, 0),  # unknown request
        (vm.Req.SET_VRING_NUM, vm.vring_state(1, 3), 0),  # not a power of two
        (vm.Req.SET_VRING_NUM, vm.vring_state(1, 65536), 0),
        (vm.Req.SET_VRING_NUM, vm.vring_state(77, 256), 0),  # no such queue
        (vm.Req.SET_VRING_ADDR, vm.vring_addr(1, 1 << 50, 1 << 50, 1 << 50), 0),
        (vm.Req.SET_VRING_BASE, b"\0" * 3, 0),  # short payload
        (vm.Req.SET_FEATURES, vm.u64(1 << 63), 0),  # not offered
        (vm.Req.SET_MEM_TABLE, vm.mem_table([]), 0),
        (vm.Req.SET_MEM_TABLE, vm.VRING_STATE.pack(9, 0) + b"\0" * 32 * 9, 0),
        (vm.Req.SET_VRING_KICK, vm.u64(1), 0),  # a kick without its fd (and no NOFD bit)
        (vm.Req.SET_OWNER, b"", 3),  # fds where none belong
        (vm.Req.GET_FEATURES, b"", 2),
        (vm.Req.SET_VRING_NUM, vm.vring_state(1, 256), 1),
        (vm.Req.ADD_MEM_REG, vm.single_region(vm.Region(0, 1 << 20, 0x1000)), 0),  # no fd
        (vm.Req.REM_MEM_REG, vm.single_region(vm.Region(1 << 40, 1 << 20, 0)), 0),
    ],
    ids=lambda v: str(v)[:24],
)
def test_garbage_vhost_message(
    connect: Connect, served: Daemon, request_: int, payload: bytes, fds: int
) -> None:
    fe = connect(timeout=2.0)
    FuseClient(fe).init()
    before = _fd_count(served.proc.pid)
    extra = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(fds)]
    try:
        res = raw_message(fe, request_, payload, extra, flags=vm.VERSION | vm.FLAG_NEED_REPLY)
    finally:
        for fd in extra:
            os.close(fd)
    if res.alive and res.replied and request_ not in vm.REPLYING:
        assert (res.request, res.flags) == (request_, 0x5)
        assert vm.reply_u64(res.payload) != 0, "garbage acknowledged as success"
    fe.close()
    _fresh_connection_works(served)
    # Fds the daemon did not keep are closed (it may hold a few for the new connection).
    assert _fd_count(served.proc.pid) <= before + 2
    assert served.proc.poll() is None


def test_truncated_and_oversized_messages(connect: Connect, served: Daemon) -> None:
    fe = connect(timeout=2.0)
    fe.c.send(vm.HEADER.pack(vm.Req.SET_VRING_NUM, vm.VERSION, 1 << 30))  # 1 GiB payload
    fe.close()
    _fresh_connection_works(served)
    fe = connect(timeout=2.0)
    fe.c.send(vm.HEADER.pack(vm.Req.SET_VRING_ADDR, vm.VERSION, 40)[:7])  # half a header
    fe.close()
    _fresh_connection_works(served)


def test_region_bigger_than_its_file_is_refused(connect: Connect, served: Daemon) -> None:
    """A region whose fd is shorter than memory_size: mapping it would SIGBUS on access."""
    fe = connect(timeout=2.0)
    fd = os.memfd_create("short", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4096)
    try:
        region = vm.Region(1 << 32, 1 << 20, 0x7E00_0000_0000)
        with pytest.raises(VhostNack):
            fe.send(vm.Req.ADD_MEM_REG, vm.single_region(region), [fd])
    finally:
        os.close(fd)
    fe.close()
    _fresh_connection_works(served)


def test_bad_memory_never_reaches_a_ring(connect: Connect, served: Daemon, tmp_path: Path) -> None:
    """Ring addresses outside guest memory: SET_VRING_ADDR is refused, the device lives."""
    fe = connect(timeout=2.0)
    with pytest.raises(VhostNack):
        fe.send(vm.Req.SET_VRING_ADDR, vm.vring_addr(1, 0x1234, 0x1234, 0x1234))
    fe.close()
    _fresh_connection_works(served)
