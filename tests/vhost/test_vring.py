"""The C virtqueue core, in-process: rings laid out by hand in memfd-backed guest memory."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from virtiofsd_nydus._native import ffi, lib
from virtiofsd_nydus.errors import GuestError, LocalError
from virtiofsd_nydus.vhost.memory import GuestMemory
from virtiofsd_nydus.vhost.message import MemoryRegion
from virtiofsd_nydus.vhost.vring import Virtqueue

from .driver import INDIRECT, MIB, NEXT, WRITE, Driver, Layout, make_memory

N = 8
BUF = 0x10000  # guest buffers start here


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    memory, fd = make_memory()
    os.close(fd)
    yield memory
    memory.close()


def start(mem: GuestMemory, size: int = N, event_idx: bool = False) -> tuple[Driver, Virtqueue]:
    drv = Driver(mem, size)
    vq = Virtqueue(0, mem, batch_size=4)
    vq.start(size, 0, drv.desc, drv.avail, drv.used, event_idx)
    return drv, vq


def test_pop_read_write_push(mem: GuestMemory) -> None:
    drv, vq = start(mem)
    mem.view(BUF, 5)[:] = b"hello"
    mem.view(BUF + 0x100, 6)[:] = b" world"
    drv.set_desc(3, BUF, 5, NEXT, 5)
    drv.set_desc(5, BUF + 0x100, 6, NEXT, 1)
    drv.set_desc(1, BUF + 0x200, 4, WRITE | NEXT, 2)
    drv.set_desc(2, BUF + 0x300, 8, WRITE)
    drv.publish(3)
    [chain] = vq.pop()
    assert (chain.head, chain.read_len, chain.write_len) == (3, 11, 12)
    assert (chain.cdata.nread, chain.cdata.nwrite) == (2, 2)
    assert chain.read() == b"hello world"
    assert chain.read(3, 4) == b"lo w"
    assert chain.read(9) == b"ld"
    assert chain.write(b"abcdefghijklmnop") == 12  # short: the stream ends
    assert bytes(mem.view(BUF + 0x200, 4)) == b"abcd"
    assert bytes(mem.view(BUF + 0x300, 8)) == b"efghijkl"
    assert chain.write(b"XY", offset=5) == 2
    assert bytes(mem.view(BUF + 0x300, 8)) == b"eXYhijkl"
    assert vq.inflight == 1 and drv.used_idx() == 0
    vq.complete(chain, 12)
    assert drv.used_idx() == 1 and drv.used_elem(0) == (3, 12)
    assert vq.inflight == 0 and vq.pop() == []


def test_batches_and_wraparound(mem: GuestMemory) -> None:
    drv, vq = start(mem)
    for i in range(N):
        drv.set_desc(i, BUF + 16 * i, 16, WRITE)
    total = 0
    for _round in range(3):  # 3 * 8 chains: indices wrap the ring twice
        drv.publish(*range(N))
        popped = vq.pop()
        assert [c.head for c in popped] == [0, 1, 2, 3]  # batch_size 4
        popped += vq.pop()
        assert vq.pop() == []
        for c in popped:
            vq.complete(c, c.head)
        total += N
        assert drv.used_idx() == total
    assert [drv.used_elem(i) for i in range(N)] == [(i, i) for i in range(N)]
    assert vq.last_avail_idx == 24


def test_avail_idx_wraps_16_bits(mem: GuestMemory) -> None:
    drv = Driver(mem, N)
    drv.set_avail_idx(0xFFFE)
    drv.w(drv.used + 2, "H", 0xFFFE)
    vq = Virtqueue(0, mem)
    vq.start(N, 0xFFFE, drv.desc, drv.avail, drv.used, False)
    drv.set_desc(0, BUF, 4, WRITE)
    drv.set_desc(1, BUF + 4, 4, WRITE)
    drv.set_desc(2, BUF + 8, 4, WRITE)
    drv.publish(0, 1, 2)
    chains = vq.pop()
    assert [c.head for c in chains] == [0, 1, 2]
    for c in chains:
        vq.complete(c, 4)
    assert drv.used_idx() == 1  # 0xFFFE + 3, mod 2**16: used idx read back at start


def test_buffer_crossing_region_edge_is_split(mem: GuestMemory) -> None:
    drv, vq = start(mem)
    mem.view(MIB - 3, 3)[:] = b"abc"
    mem.view(MIB, 3)[:] = b"def"
    drv.set_desc(0, MIB - 3, 6, NEXT, 1)
    drv.set_desc(1, 2 * MIB - 2, 4, WRITE | 0, 0)  # runs past region 2 into the hole
    drv.publish(0)
    assert vq.pop() == []
    assert vq.broken == "buffer outside guest memory"
    drv2, vq2 = start(mem)
    drv2.set_desc(0, MIB - 3, 6, NEXT, 1)
    drv2.set_desc(1, MIB - 1, 2, WRITE)
    drv2.publish(0)
    [chain] = vq2.pop()
    assert (chain.cdata.nread, chain.cdata.nwrite) == (2, 2)
    assert chain.read() == b"abcdef"
    assert chain.write(b"XY") == 2
    assert bytes(mem.view(MIB - 1, 1)) + bytes(mem.view(MIB, 1)) == b"XY"


def test_indirect_table(mem: GuestMemory) -> None:
    drv, vq = start(mem)
    table = 0x8000
    mem.view(BUF, 4)[:] = b"req!"
    drv.set_desc(0, BUF, 4, NEXT, 2, table=table)
    drv.set_desc(2, BUF + 0x40, 8, WRITE | NEXT, 1, table=table)
    drv.set_desc(1, BUF + 0x80, 8, WRITE, 0, table=table)
    drv.set_desc(6, table, 3 * 16, INDIRECT | WRITE)  # WRITE on the pointer is ignored
    drv.publish(6)
    [chain] = vq.pop()
    assert (chain.head, chain.read_len, chain.write_len) == (6, 4, 16)
    assert chain.read() == b"req!"
    vq.complete(chain, 0)
    assert drv.used_elem(0) == (6, 0)


def test_direct_then_indirect(mem: GuestMemory) -> None:
    drv, vq = start(mem)
    table = 0x8000
    drv.set_desc(0, BUF + 0x40, 8, WRITE, 0, table=table)
    drv.set_desc(4, BUF, 4, NEXT, 5)
    drv.set_desc(5, table, 16, INDIRECT)
    drv.publish(4)
    [chain] = vq.pop()
    assert (chain.read_len, chain.write_len) == (4, 8)


def test_zero_length_descriptors_are_skipped(mem: GuestMemory) -> None:
    drv, vq = start(mem)
    drv.set_desc(0, 0xDEAD_0000_0000, 0, NEXT, 1)
    drv.set_desc(1, BUF, 8, WRITE)
    drv.publish(0)
    [chain] = vq.pop()
    assert (chain.cdata.nread, chain.cdata.nwrite, chain.write_len) == (0, 1, 8)


def test_event_idx_notifications(mem: GuestMemory) -> None:
    drv, vq = start(mem, event_idx=True)
    for i in range(N):
        drv.set_desc(i, BUF + 16 * i, 16, WRITE)
    drv.publish(0, 1, 2, 3)
    chains = vq.pop()
    assert drv.avail_event() == 4  # kick me when entry 4 is published
    need = lib.vn_vq_need_notify
    lib.vn_vq_push(vq.cdata, chains[0].head, 1)
    assert need(vq.cdata) == 1  # the first decision always notifies
    drv.set_used_event(2)  # guest: interrupt when used idx passes 2
    lib.vn_vq_push(vq.cdata, chains[1].head, 1)
    assert need(vq.cdata) == 0  # used idx 2: (2 - 2 - 1) mod 2**16 is not < (2 - 1)
    lib.vn_vq_push(vq.cdata, chains[2].head, 1)
    assert need(vq.cdata) == 1  # used idx 3 crossed used_event + 1
    lib.vn_vq_push(vq.cdata, chains[3].head, 1)
    assert need(vq.cdata) == 0  # already signalled past used_event
    drv.set_used_event(3)
    assert need(vq.cdata) == 0  # nothing new since the last signal
    # enable_notify sees chains published meanwhile.
    assert vq.enable_notify() is False
    drv.publish(4)
    assert vq.enable_notify() is True
    assert drv.avail_event() == 4


def test_no_interrupt_flag_without_event_idx(mem: GuestMemory) -> None:
    drv, vq = start(mem)
    drv.set_desc(0, BUF, 16, WRITE)
    drv.publish(0)
    [chain] = vq.pop()
    lib.vn_vq_push(vq.cdata, chain.head, 1)
    drv.set_avail_flags(1)
    assert lib.vn_vq_need_notify(vq.cdata) == 0
    drv.set_avail_flags(0)
    assert lib.vn_vq_need_notify(vq.cdata) == 1
    vq.disable_notify()
    assert drv.used_flags() == 1
    assert vq.enable_notify() is False
    assert drv.used_flags() == 0


def test_call_fd_is_written(mem: GuestMemory) -> None:
    drv, vq = start(mem)
    call = os.eventfd(0, os.EFD_NONBLOCK)
    vq.call_fd = call
    drv.set_desc(0, BUF, 16, WRITE)
    drv.publish(0)
    [chain] = vq.pop()
    vq.complete(chain, 3)
    assert os.eventfd_read(call) == 1
    os.close(call)


def test_push_of_unknown_head_is_refused(mem: GuestMemory) -> None:
    drv, vq = start(mem)
    assert lib.vn_vq_push(vq.cdata, 2, 0) == -lib.VN_E_PUSH_HEAD
    assert lib.vn_vq_push(vq.cdata, 200, 0) == -lib.VN_E_PUSH_HEAD
    assert drv.used_idx() == 0


def test_iov_pool_full_stops_the_batch_not_the_queue(mem: GuestMemory) -> None:
    drv, vq = start(mem)
    drv.set_desc(0, BUF, 8, NEXT, 1)
    drv.set_desc(1, BUF + 8, 8, WRITE)
    drv.set_desc(2, BUF + 16, 8, NEXT, 3)
    drv.set_desc(3, BUF + 24, 8, WRITE)
    drv.publish(0, 2)
    chains = ffi.new("struct vn_chain[]", 4)
    iovs = ffi.new("struct vn_iov[]", 3)
    assert lib.vn_vq_pop(vq.cdata, chains, 4, iovs, 3) == 1
    assert vq.broken is None
    assert lib.vn_vq_pop(vq.cdata, chains + 1, 4, iovs, 3) == 1
    drv.publish(0)  # head 0 is still in flight: that is a guest error, not a pool one
    assert lib.vn_vq_pop(vq.cdata, chains, 4, iovs, 1) == -lib.VN_E_HEAD_BUSY


def test_chain_needing_more_iovs_than_the_pool(mem: GuestMemory) -> None:
    drv, vq = start(mem)
    drv.set_desc(0, BUF, 8, NEXT, 1)
    drv.set_desc(1, BUF + 8, 8, WRITE)
    drv.publish(0)
    chains = ffi.new("struct vn_chain[]", 1)
    iovs = ffi.new("struct vn_iov[]", 1)
    assert lib.vn_vq_pop(vq.cdata, chains, 1, iovs, 1) == -lib.VN_E_TOO_MANY_IOV


def test_preadv_into_chain(mem: GuestMemory, tmp_path: os.PathLike[str]) -> None:
    drv, vq = start(mem)
    path = os.path.join(tmp_path, "f")
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * 4)
    drv.set_desc(0, BUF, 16, NEXT, 1)
    drv.set_desc(1, BUF + 0x100, 10, WRITE | NEXT, 2)
    drv.set_desc(2, MIB - 5, 100, WRITE)  # crosses the region edge
    drv.publish(0)
    [chain] = vq.pop()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert chain.preadv(fd, 1000, 50, offset=4) == 24  # 1024-byte file
        assert bytes(mem.view(BUF + 0x104, 6)) == bytes(range(232, 238))
        bufs = chain.write_buffers(2, 20)
        assert [len(b) for b in bufs] == [8, 5, 7]
        assert os.preadv(fd, bufs, 0) == 20
        assert bytes(mem.view(MIB - 5, 5)) == bytes(range(8, 13))
    finally:
        os.close(fd)


def test_start_rejects_rings_outside_memory(mem: GuestMemory) -> None:
    vq = Virtqueue(0, mem)
    with pytest.raises(GuestError, match="outside guest memory"):
        vq.start(N, 0, 2 * MIB, 0x2000, 0x3000, False)  # desc table in the hole
    with pytest.raises(GuestError, match="outside guest memory or misaligned"):
        vq.start(N, 0, 0x1008, 0x2000, 0x3000, False)
    with pytest.raises(GuestError, match="invalid argument"):
        vq.start(6, 0, 0x1000, 0x2000, 0x3000, False)
    drv = Driver(mem, 256, desc=MIB - 0x800)  # desc table straddles two regions
    with pytest.raises(GuestError):
        vq.start(256, 0, drv.desc, 0x2000, 0x3000, False)


def test_remap_after_memory_change(mem: GuestMemory) -> None:
    _, vq = start(mem)
    vq.remap()
    assert vq.running
    fd = os.memfd_create("x")
    os.ftruncate(fd, MIB)
    mem.remove(0, MIB)  # the ring's region goes away
    with pytest.raises(GuestError, match="outside guest memory"):
        vq.remap()
    assert vq.pop() == [] and vq.broken is not None
    mem.add(MemoryRegion(0, MIB, 0, 0), fd)
    os.close(fd)
    mem.release_retired()


# ---- a malicious guest ---------------------------------------------------------------


def _loop(drv: Driver) -> None:
    drv.set_desc(0, BUF, 8, NEXT, 1)
    drv.set_desc(1, BUF + 8, 8, NEXT, 0)
    drv.publish(0)


def _self_loop(drv: Driver) -> None:
    drv.set_desc(2, BUF, 8, WRITE | NEXT, 2)
    drv.publish(2)


def _out_of_range(drv: Driver) -> None:
    drv.set_desc(0, 3 * MIB, 8, WRITE)  # in the hole between regions
    drv.publish(0)


def _beyond_all(drv: Driver) -> None:
    drv.set_desc(0, 5 * MIB - 4, 8, WRITE)  # runs off the last region
    drv.publish(0)


def _wrap(drv: Driver) -> None:
    drv.set_desc(0, (1 << 64) - 16, 32, WRITE)
    drv.publish(0)


def _write_then_read(drv: Driver) -> None:
    drv.set_desc(0, BUF, 8, WRITE | NEXT, 1)
    drv.set_desc(1, BUF + 8, 8, 0)
    drv.publish(0)


def _nested_indirect(drv: Driver) -> None:
    drv.set_desc(0, 0x9000, 16, INDIRECT, table=0x8000)
    drv.set_desc(0, BUF, 8, WRITE, table=0x9000)
    drv.set_desc(0, 0x8000, 16, INDIRECT)
    drv.publish(0)


def _indirect_len(drv: Driver) -> None:
    drv.set_desc(0, 0x8000, 24, INDIRECT)
    drv.publish(0)


def _indirect_empty(drv: Driver) -> None:
    drv.set_desc(0, 0x8000, 0, INDIRECT)
    drv.publish(0)


def _indirect_longer_than_queue(drv: Driver) -> None:
    for i in range(N + 1):
        drv.set_desc(i, BUF + 8 * i, 8, WRITE | NEXT, i + 1, table=0x8000)
    drv.set_desc(0, 0x8000, 16 * (N + 1), INDIRECT)
    drv.publish(0)


def _indirect_loop(drv: Driver) -> None:
    drv.set_desc(0, BUF, 8, WRITE | NEXT, 1, table=0x8000)
    drv.set_desc(1, BUF + 8, 8, WRITE | NEXT, 0, table=0x8000)
    drv.set_desc(0, 0x8000, 32, INDIRECT)
    drv.publish(0)


def _indirect_next_range(drv: Driver) -> None:
    drv.set_desc(0, BUF, 8, WRITE | NEXT, 2, table=0x8000)
    drv.set_desc(1, BUF + 8, 8, WRITE, table=0x8000)
    drv.set_desc(0, 0x8000, 32, INDIRECT)
    drv.publish(0)


def _indirect_outside(drv: Driver) -> None:
    drv.set_desc(0, MIB - 16, 32, INDIRECT)  # table straddles two regions
    drv.publish(0)


def _indirect_with_next(drv: Driver) -> None:
    drv.set_desc(0, BUF, 16, WRITE, table=0x8000)
    drv.set_desc(0, 0x8000, 16, INDIRECT | NEXT, 1)
    drv.set_desc(1, BUF, 8, WRITE)
    drv.publish(0)


def _avail_jump(drv: Driver) -> None:
    drv.set_avail_idx(N + 1)


def _head_range(drv: Driver) -> None:
    drv.publish(N)


def _next_range(drv: Driver) -> None:
    drv.set_desc(0, BUF, 8, NEXT, N)
    drv.publish(0)


def _head_twice(drv: Driver) -> None:
    drv.set_desc(0, BUF, 8, WRITE)
    drv.publish(0, 0)


MALICIOUS = {
    "loop": (_loop, lib.VN_E_CHAIN_LOOP),
    "self-loop": (_self_loop, lib.VN_E_CHAIN_LOOP),
    "address in a hole": (_out_of_range, lib.VN_E_DESC_ADDR),
    "address past memory": (_beyond_all, lib.VN_E_DESC_ADDR),
    "addr+len wraps": (_wrap, lib.VN_E_DESC_OVERFLOW),
    "writable before readable": (_write_then_read, lib.VN_E_WRITE_ORDER),
    "nested indirect": (_nested_indirect, lib.VN_E_NESTED_INDIRECT),
    "indirect len not multiple of 16": (_indirect_len, lib.VN_E_INDIRECT_LEN),
    "indirect len 0": (_indirect_empty, lib.VN_E_INDIRECT_LEN),
    "indirect longer than queue": (_indirect_longer_than_queue, lib.VN_E_INDIRECT_LEN),
    "indirect loop": (_indirect_loop, lib.VN_E_CHAIN_LOOP),
    "indirect next out of table": (_indirect_next_range, lib.VN_E_NEXT_RANGE),
    "indirect table across regions": (_indirect_outside, lib.VN_E_INDIRECT_ADDR),
    "indirect with next": (_indirect_with_next, lib.VN_E_INDIRECT_NEXT),
    "avail idx jumps": (_avail_jump, lib.VN_E_AVAIL_IDX),
    "head out of range": (_head_range, lib.VN_E_HEAD_RANGE),
    "next out of range": (_next_range, lib.VN_E_NEXT_RANGE),
    "head twice in flight": (_head_twice, lib.VN_E_HEAD_BUSY),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_chain_breaks_the_queue(mem: GuestMemory, case: str) -> None:
    setup, reason = MALICIOUS[case]
    drv, vq = start(mem)
    setup(drv)
    before = drv.snapshot()
    chains = vq.pop()
    if case == "head twice in flight":  # the first copy is a fine chain
        assert [c.head for c in chains] == [0]
    else:
        assert chains == []
    assert vq.cdata.broken == reason
    assert (
        lib.vn_vq_pop(
            vq.cdata, ffi.new("struct vn_chain[]", 1), 1, ffi.new("struct vn_iov[]", 4), 4
        )
        == -reason
    )
    assert drv.snapshot() == before  # not one byte of guest memory written
    assert drv.used_idx() == 0


def test_chain_longer_than_4gib_is_refused() -> None:
    # Sparse memfd: 8 GiB of address space, nothing touched.
    mem, fd = make_memory(Layout(regions=((0, MIB, 0), (1 << 32, 8 << 30, MIB))))
    os.close(fd)
    try:
        drv, vq = start(mem)
        drv.set_desc(0, 1 << 32, 0xFFFF_FFFF, WRITE | NEXT, 1)
        drv.set_desc(1, (1 << 32) + (4 << 30), 0x10, WRITE)
        drv.publish(0)
        assert vq.pop() == []
        assert vq.cdata.broken == lib.VN_E_CHAIN_LEN
    finally:
        mem.close()


def test_memory_table_rejects_overlap_and_bad_regions() -> None:
    mem, fd = make_memory()
    try:
        with pytest.raises(GuestError, match="overlaps"):
            mem.add(MemoryRegion(MIB // 2, MIB, 0, 0), fd)
        with pytest.raises(GuestError):
            mem.add(MemoryRegion(8 * MIB, MIB, 0, 1 << 62), -1)
        assert mem.uva_to_gpa(0x7F00_0000_0000 + MIB + 5, 10) == MIB + 5
        assert mem.uva_to_gpa(0x7F00_0000_0000 + MIB - 5, 10) is None
        with pytest.raises(GuestError, match="no memory region"):
            mem.remove(123, 456)
    finally:
        os.close(fd)
        mem.close()


def test_complete_twice_and_overlong_used_len(mem: GuestMemory) -> None:
    drv, vq = start(mem)
    drv.set_desc(0, BUF, 16, WRITE)
    drv.publish(0)
    [chain] = vq.pop()
    vq.complete(chain, 1 << 20)
    assert drv.used_elem(0) == (0, 16)  # clamped to the writable length
    with pytest.raises(LocalError, match="twice"):
        vq.complete(chain, 0)
    assert vq.outstanding == 0


def test_translate_splits_at_region_edges(mem: GuestMemory) -> None:
    mem.view(MIB - 2, 2)[:] = b"ab"
    mem.view(MIB, 3)[:] = b"cde"
    parts = mem.translate(MIB - 2, 5)
    assert [bytes(p) for p in parts] == [b"ab", b"cde"]
    parts[1][0] = ord("C")
    assert bytes(mem.view(MIB, 1)) == b"C"
    assert mem.translate(0, 0) == []
    with pytest.raises(GuestError, match="outside guest memory"):
        mem.translate(2 * MIB - 1, 2)
    with pytest.raises(GuestError, match="wraps"):
        mem.translate((1 << 64) - 1, 2)


def test_complete_many(mem: GuestMemory) -> None:
    drv, vq = start(mem, event_idx=True)
    for i in range(4):
        drv.set_desc(i, BUF + 16 * i, 16, WRITE)
    drv.publish(0, 1, 2, 3)
    chains = vq.pop()
    vq.complete_many([(c, c.head + 1) for c in chains[1:]])
    assert drv.used_idx() == 3
    assert [drv.used_elem(i) for i in range(3)] == [(1, 2), (2, 3), (3, 4)]
    vq.complete_many([(chains[0], 99)])  # one chain: the plain path, clamped
    assert drv.used_elem(3) == (0, 16) and vq.outstanding == 0 and vq.inflight == 0
    with pytest.raises(LocalError, match="twice"):
        vq.complete_many([(chains[0], 1), (chains[1], 1)])
