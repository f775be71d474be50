"""The vhost-user codec, byte for byte against hand-computed encodings."""

from __future__ import annotations

import pytest

from virtiofsd_nydus.vhost import message as m
from virtiofsd_nydus.vhost.message import Request as R


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def hdr(request: int, flags: int, size: int) -> bytes:
    return h(f"{request:02x}000000 {flags:02x}000000 {size:02x}000000")


REGION = m.MemoryRegion(0x1_0000_0000, 0x2000_0000, 0x7F00_0000_0000, 0x1000)
REGION_BYTES = h(
    "0000000001000000"  # gpa 0x1_0000_0000
    "0000002000000000"  # size 0x2000_0000
    "0000000000 7f0000"  # uaddr 0x7f00_0000_0000
    "0010000000000000"  # mmap_offset 0x1000
)

# (request, decoded payload, payload bytes)
CASES = [
    (R.GET_FEATURES, m.Empty(), b""),
    (R.SET_FEATURES, m.U64(0x1_7000_0000), h("0000007001000000")),
    (R.SET_OWNER, m.Empty(), b""),
    (R.SET_VRING_NUM, m.VringState(1, 1024), h("01000000 00040000")),
    (R.SET_VRING_BASE, m.VringState(0, 0xFFFF), h("00000000 ffff0000")),
    (R.GET_VRING_BASE, m.VringState(2, 0), h("02000000 00000000")),
    (R.SET_VRING_ENABLE, m.VringState(3, 1), h("03000000 01000000")),
    (
        R.SET_VRING_ADDR,
        m.VringAddr(2, 0, 0x1000, 0x3000, 0x2000, 0),
        h("02000000 00000000 0010000000000000 0030000000000000 0020000000000000 0000000000000000"),
    ),
    (R.SET_VRING_KICK, m.U64(0x101), h("0101000000000000")),
    (R.SET_VRING_CALL, m.U64(0x1), h("0100000000000000")),
    (R.SET_VRING_ERR, m.U64(0x2), h("0200000000000000")),
    (R.GET_PROTOCOL_FEATURES, m.Empty(), b""),
    (R.SET_PROTOCOL_FEATURES, m.U64(0x8009), h("0980000000000000")),
    (R.GET_QUEUE_NUM, m.Empty(), b""),
    (R.SET_MEM_TABLE, m.MemTable((REGION,)), h("01000000 00000000") + REGION_BYTES),
    (R.ADD_MEM_REG, m.MemRegionMsg(REGION), bytes(8) + REGION_BYTES),
    (R.REM_MEM_REG, m.MemRegionMsg(REGION), bytes(8) + REGION_BYTES),
    (R.GET_MAX_MEM_SLOTS, m.Empty(), b""),
    (R.GET_CONFIG, m.Config(4, 4, 0, bytes(4)), h("04000000 04000000 00000000 00000000")),
    (R.SET_CONFIG, m.Config(0, 2, 1, b"ab"), h("00000000 02000000 01000000 6162")),
    (
        R.GET_INFLIGHT_FD,
        m.Inflight(0x1000, 0, 2, 1024),
        h("0010000000000000 0000000000000000 0200 0004 00000000"),
    ),
    (R.RESET_DEVICE, m.Empty(), b""),
    (R.SET_STATUS, m.U64(0xF), h("0f00000000000000")),
    (R.GET_STATUS, m.Empty(), b""),
]


@pytest.mark.parametrize(("request_", "value", "payload"), CASES, ids=lambda c: str(c)[:20])
def test_decode_and_encode(request_: int, value: m.Payload, payload: bytes) -> None:
    wire = m.encode(request_, payload, m.VERSION | m.FLAG_NEED_REPLY)
    assert wire[:12] == hdr(request_, 0x9, len(payload))
    header = m.Header.unpack(wire[:12])
    assert header == m.Header(request_, 0x9, len(payload)) and header.need_reply
    lo, _ = m.fds_allowed(request_, value)
    assert m.decode(header, wire[12:], lo) == value
    assert value.pack() == payload


def test_reply_flags_are_exactly_version_and_reply() -> None:
    assert m.encode_reply(R.GET_FEATURES, m.U64(0x1_7000_0000).pack()) == hdr(1, 0x5, 8) + h(
        "0000007001000000"
    )
    assert m.encode_reply(R.SET_OWNER, m.U64(1).pack()) == h(
        "03000000 05000000 08000000 0100000000000000"
    )


def test_fd_rules() -> None:
    assert m.fds_allowed(R.SET_VRING_KICK, m.U64(0x100)) == (0, 0)
    assert m.fds_allowed(R.SET_VRING_CALL, m.U64(0x7)) == (1, 1)
    assert m.fds_allowed(R.SET_MEM_TABLE, m.MemTable((REGION, REGION))) == (2, 2)
    assert m.fds_allowed(R.ADD_MEM_REG, m.MemRegionMsg(REGION)) == (1, 1)
    assert m.fds_allowed(R.REM_MEM_REG, m.MemRegionMsg(REGION)) == (0, 1)
    assert m.fds_allowed(R.SET_BACKEND_REQ_FD, m.Empty()) == (1, 1)
    assert m.fds_allowed(R.SET_VRING_NUM, m.VringState(0, 8)) == (0, 0)


def _table(n: int) -> bytes:
    return m.MemTable.__new__(m.MemTable)._HEAD.pack(n, 0) + REGION_BYTES * n


BAD = [
    (R.SET_FEATURES, 0x1, h("00"), 0, "U64 payload is 1 bytes"),
    (R.GET_FEATURES, 0x1, h("00000000"), 0, "unexpected 4-byte payload"),
    (R.SET_VRING_NUM, 0x1, h("0100000000"), 0, "VringState payload is 5"),
    (R.SET_VRING_ADDR, 0x1, bytes(32), 0, "VringAddr payload is 32"),
    (R.SET_MEM_TABLE, 0x1, _table(9), 9, "with 9 regions"),
    (R.SET_MEM_TABLE, 0x1, _table(0), 0, "with 0 regions"),
    (R.SET_MEM_TABLE, 0x1, _table(2)[:-1], 2, "not 72"),
    (R.SET_MEM_TABLE, 0x1, _table(2), 1, "with 1 fds, expected 2"),
    (R.ADD_MEM_REG, 0x1, bytes(8) + REGION_BYTES, 0, "with 0 fds, expected 1"),
    (R.SET_VRING_KICK, 0x1, h("0001000000000000"), 1, "with 1 fds, expected 0"),
    (R.SET_VRING_CALL, 0x1, h("0000000000000000"), 0, "with 0 fds, expected 1"),
    (R.SET_VRING_NUM, 0x1, h("01000000 00040000"), 1, "with 1 fds, expected 0"),
    (R.REM_MEM_REG, 0x1, bytes(8) + REGION_BYTES, 2, "expected 0..1"),
    (R.SET_CONFIG, 0x1, h("00000000 05000000 00000000 6162"), 0, "announces 5"),
    (R.SET_CONFIG, 0x1, h("00010000 02000000 00000000 6162"), 0, "beyond 256"),
    (R.SET_FEATURES, 0x5, bytes(8), 0, "REPLY flag"),
    (R.SET_FEATURES, 0x2, bytes(8), 0, "version 2"),
    (99, 0x1, b"", 0, "unknown request 99"),
]


@pytest.mark.parametrize(("request_", "flags", "payload", "nfds", "why"), BAD)
def test_malformed(request_: int, flags: int, payload: bytes, nfds: int, why: str) -> None:
    with pytest.raises(m.MessageError, match=why):
        m.decode(m.Header(request_, flags, len(payload)), payload, nfds)


def test_bad_regions() -> None:
    with pytest.raises(m.MessageError, match="size 0"):
        m.MemoryRegion(0, 0, 0, 0).check()
    with pytest.raises(m.MessageError, match="guest range wraps"):
        m.MemoryRegion((1 << 64) - 4096, 8192, 0, 0).check()
    with pytest.raises(m.MessageError, match="mmap range wraps"):
        m.MemoryRegion(0, 8192, 0, (1 << 64) - 1).check()
    with pytest.raises(m.MessageError, match="header is 11 bytes"):
        m.Header.unpack(bytes(11))
