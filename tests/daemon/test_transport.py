"""The vhost-user side of the whole daemon: several request queues under concurrent load,
memory hot-add/remove, rings stopped and restarted (inline and with a thread pool)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.frontend import fuse_abi as fa
from tests.frontend.client import FuseClient
from tests.frontend.frontend import Frontend
from tests.frontend.vring import Buf

Connect = Callable[..., Frontend]


def test_four_request_queues_carry_concurrent_reads(connect: Connect, source: Path) -> None:
    fe = connect(request_queues=4)
    assert fe.request_queues == 4
    fs = FuseClient(fe)
    fs.init()
    want = (source / "big.bin").read_bytes()
    node = fs.lookup(fa.ROOT_ID, b"big.bin").nodeid
    fh = fs.open(node).fh
    expected: dict[int, bytes] = {}
    for k in range(400):
        q, off = 1 + k % 4, (k * 7919) % (len(want) - 8192)
        u = fs.submit(fa.Op.READ, node, fa.read_in(fh, off, 8192), 8192, queue=q)
        expected[u] = want[off : off + 8192]
    replies = fs.wait(expected)
    assert [bytes(r.payload()) for r in replies] == list(expected.values())
    # Every queue answered its own share; the hiprio queue still takes FORGETs.
    fs.forget(node, 1)
    bases = fe.stop()
    assert bases == {0: 1, 1: 103, 2: 100, 3: 100, 4: 100}  # + INIT, LOOKUP, OPEN


def test_memory_regions_added_and_removed(connect: Connect) -> None:
    fe = connect(add_mem_reg=True)
    fs = FuseClient(fe)
    fs.init()
    root_ino = fs.getattr(fa.ROOT_ID).attr.ino
    for _ in range(3):
        region = fe.add_region(1 << 20)
        req = fa.request(fa.Op.GETATTR, 99, fa.ROOT_ID, fa.getattr_in())
        in_gpa, out_gpa = region.gpa, region.gpa + 4096
        fe.mem.write(in_gpa, req)
        ring = fe.queues[1].ring
        head = ring.add_chain([Buf(in_gpa, len(req)), Buf(out_gpa, 16 + 104, True)])
        fe.queues[1].submit([head])
        assert fe.queues[1].wait_used(1, 5.0)
        [(used, length)] = ring.pop_used()
        ring.free_chain(head)
        assert used == head and length == 120
        reply = fa.attr_out(fa.check_reply(fe.mem.read(out_gpa, length), 99, fa.Op.GETATTR))
        assert reply.attr.ino == root_ino
        fe.remove_region(region)
        assert fs.getattr(fa.ROOT_ID).attr.ino == root_ino


def test_rings_stop_and_restart_where_they_were(connect: Connect) -> None:
    fe = connect(request_queues=2)
    fs = FuseClient(fe)
    fs.init()
    for _ in range(5):
        fs.getattr(fa.ROOT_ID)
    base = fe.stop_queue(1)
    assert base == fe.queues[1].ring.avail_idx == 6  # INIT + 5 GETATTRs
    fe.restart_queue(1, base)
    assert fs.lookup(fa.ROOT_ID, b"hello.txt").attr.size > 0
    assert fe.stop_queue(1) == base + 1
    fe.restart_queue(1, base + 1)
    # The other queue was never stopped and still works; so does the restarted one.
    u = fs.submit(fa.Op.GETATTR, fa.ROOT_ID, fa.getattr_in(), 104, queue=2)
    assert fs.wait([u])[0].payload()
    assert fs.getattr(fa.ROOT_ID).attr.ino > 0


def test_stop_with_requests_pending_answers_them_first(connect: Connect, source: Path) -> None:
    fe = connect()
    fs = FuseClient(fe)
    fs.init()
    node = fs.lookup(fa.ROOT_ID, b"big.bin").nodeid
    fh = fs.open(node).fh
    uniques = [fs.submit(fa.Op.READ, node, fa.read_in(fh, k * 4096, 4096), 4096) for k in range(64)]
    fs.flush()
    base = fe.stop_queue(1)
    assert base == fe.queues[1].ring.avail_idx
    want = (source / "big.bin").read_bytes()
    replies = fs.wait(uniques)  # every popped request completed before GET_VRING_BASE
    blocks = [want[k * 4096 : (k + 1) * 4096] for k in range(64)]
    assert [bytes(r.payload()) for r in replies] == blocks
