"""The driver's own encoders, decoders and ring arithmetic, without any back-end."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.frontend import fuse_abi as fa
from tests.frontend import vhost_msg as vm
from tests.frontend.memory import GuestMemory
from tests.frontend.pipeline import cycle_take
from tests.frontend.vring import Buf, SplitRing, need_event


def test_request_header_and_struct_sizes() -> None:
    req = fa.request(fa.Op.READ, 10, 5, fa.read_in(3, 4096, 128))
    assert len(req) == 80
    assert fa.IN_HEADER.unpack_from(req)[:4] == (80, 15, 10, 5)
    assert len(fa.init_in()) == 64 and len(fa.setattr_in(size=1)) == 88
    assert fa.batch_forget_in([(1, 2), (3, 4)]) == struct.pack("<IIQQQQ", 2, 0, 1, 2, 3, 4)


def _direntplus(name: bytes, off: int, nodeid: int) -> bytes:
    entry = fa.ENTRY_OUT_HEAD.pack(nodeid, 0, 1, 1, 0, 0) + fa.ATTR.pack(*range(16))
    rec = entry + fa.DIRENT_HEAD.pack(nodeid + 100, off, len(name), 8) + name
    return rec + b"\0" * (-len(rec) % 8)


@given(
    st.lists(
        st.binary(min_size=1, max_size=40).filter(lambda n: b"/" not in n and b"\0" not in n),
        max_size=8,
    )
)
def test_direntplus_roundtrip(names: list[bytes]) -> None:
    data = b"".join(_direntplus(n, i + 1, i + 2) for i, n in enumerate(names))
    got = fa.dirents(data, plus=True)
    assert [d.name for d in got] == names
    assert [d.entry.nodeid for d in got if d.entry] == [i + 2 for i in range(len(names))]


def test_dirent_framing_errors_are_caught() -> None:
    rec = _direntplus(b"abc", 1, 2)
    with pytest.raises(fa.ReplyFormatError):
        fa.dirents(rec[:-8], plus=True)
    with pytest.raises(fa.ReplyFormatError):
        fa.dirents(rec, plus=False)  # a direntplus read as a plain dirent has a bogus namelen


def test_check_reply_rules() -> None:
    ok = fa.OUT_HEADER.pack(24, 0, 6) + b"12345678"
    assert bytes(fa.check_reply(ok, 6, fa.Op.LSEEK)) == b"12345678"
    with pytest.raises(OSError) as e:
        fa.check_reply(fa.OUT_HEADER.pack(16, -2, 6), 6, fa.Op.LOOKUP)
    assert e.value.errno == 2
    for bad in (
        fa.OUT_HEADER.pack(24, 0, 7) + b"x" * 8,
        fa.OUT_HEADER.pack(20, 0, 6) + b"x" * 8,
        fa.OUT_HEADER.pack(24, -2, 6) + b"x" * 8,
        fa.OUT_HEADER.pack(16, 5, 6),
    ):
        with pytest.raises(fa.ReplyFormatError):
            fa.check_reply(bad, 6, fa.Op.LOOKUP)


def test_vhost_messages() -> None:
    assert vm.message(vm.Req.SET_VRING_NUM, vm.vring_state(1, 256)) == struct.pack(
        "<IIIII", 8, 1, 8, 1, 256
    )
    assert len(vm.mem_table([vm.Region(0, 1, 2, 3)])) == 40
    assert len(vm.single_region(vm.Region(0, 1, 2))) == 40
    assert vm.check_reply_header(1, struct.pack("<III", 1, 5, 8)) == 8
    for bad in (struct.pack("<III", 2, 5, 8), struct.pack("<III", 1, 1, 8)):
        with pytest.raises(vm.ReplyError):
            vm.check_reply_header(1, bad)


def test_need_event_matches_the_virtio_formula() -> None:
    assert need_event(event=4, new=5, old=4)  # crossed exactly
    assert not need_event(event=9, new=5, old=4)
    assert need_event(event=0xFFFF, new=2, old=0xFFFE)  # across the 16-bit wrap


def test_ring_wraps_and_reads_used_entries() -> None:
    mem = GuestMemory()
    mem.add(1 << 20, gpa=0)
    ring = SplitRing(mem, 8, event_idx=True)
    heads = [ring.add_chain([Buf(0x80000 + 64 * i, 64, True)]) for i in range(6)]
    ring.avail_idx = 0xFFFC  # publish across both the ring end and the u16 wrap
    old, new = ring.put_avail(heads)
    assert (old, new) == (0xFFFC, 2)
    assert list(ring.avail[2 + 4 : 2 + 8]) + list(ring.avail[2 : 2 + 2]) == heads
    # Play the device: complete two entries.
    for k, (h, n) in enumerate([(heads[1], 16), (heads[0], 80)]):
        ring.used_words[1 + 2 * k], ring.used_words[2 + 2 * k] = h, n
    ring.used_u16[1] = 2
    assert ring.pop_used() == [(heads[1], 16), (heads[0], 80)]
    assert not ring.arm(1)
    assert ring.avail[8 + 2] == 2  # used_event = next entry we wait for
    mem.close()


@given(st.integers(1, 20), st.integers(0, 100), st.integers(0, 70))
def test_cycle_take_wraps_like_modulo(size: int, start: int, n: int) -> None:
    seq = list(range(100, 100 + size))
    assert cycle_take(seq, start, n) == [seq[(start + j) % size] for j in range(n)]
