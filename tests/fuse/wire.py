"""Build FUSE requests and take replies apart, the way the guest kernel would."""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

from virtiofsd_nydus.fuse import abi
from virtiofsd_nydus.fuse.abi import Opcode
from virtiofsd_nydus.fuse.filesystem import Attr

_unique = itertools.count(1)
BIG = 1 << 21  # a reply buffer large enough for anything


def request(
    opcode: int,
    body: bytes = b"",
    *,
    nodeid: int = abi.ROOT_ID,
    unique: int | None = None,
    uid: int = 0,
    gid: int = 0,
    pid: int = 1,
    extlen: int = 0,
) -> bytes:
    u = next(_unique) if unique is None else unique
    n = abi.IN_HEADER.size + len(body)
    return abi.IN_HEADER.pack(n, opcode, u, nodeid, uid, gid, pid, extlen, 0) + body


@dataclass
class Reply:
    error: int
    unique: int
    payload: bytes


def parse(raw: bytes | None) -> Reply:
    assert raw is not None, "expected a reply"
    n, error, unique = abi.OUT_HEADER.unpack_from(raw)
    assert n == len(raw), (n, len(raw))
    assert error <= 0
    if error:
        assert n == abi.OUT_HEADER.size, "error replies carry no payload"
    return Reply(-error, unique, raw[abi.OUT_HEADER.size :])


def init_body(
    minor: int = 38,
    flags: int = 0,
    flags2: int | None = None,
    max_readahead: int = 1 << 17,
    major: int = 7,
) -> bytes:
    """A 64-byte init_in (7.36+), or the 16-byte one older kernels send when flags2 is None."""
    if flags2 is None:
        return abi.INIT_IN_COMPAT.pack(major, minor, max_readahead, flags)
    return abi.INIT_IN.pack(major, minor, max_readahead, flags | abi.INIT_EXT, flags2)


# What a Linux 6.x guest offers (flags) — everything a virtio-fs mount may see.
KERNEL_FLAGS = (1 << 31) - 1 & ~abi.INIT_EXT
KERNEL_FLAGS2 = (abi.SECURITY_CTX | abi.CREATE_SUPP_GROUP | abi.HAS_EXPIRE_ONLY) >> 32


@dataclass
class InitOut:
    major: int
    minor: int
    max_readahead: int
    flags: int
    max_background: int
    congestion_threshold: int
    max_write: int
    time_gran: int
    max_pages: int
    map_alignment: int
    flags2: int
    max_stack_depth: int


def init_out(payload: bytes) -> InitOut:
    assert len(payload) == abi.INIT_OUT.size
    return InitOut(*abi.INIT_OUT.unpack(payload))


def cstr(*names: bytes) -> bytes:
    return b"".join(n + b"\0" for n in names)


def read_in(fh: int, offset: int, size: int) -> bytes:
    return abi.READ_IN.pack(fh, offset, size, 0, 0, 0, 0)


@dataclass
class Dirent:
    ino: int
    off: int
    type: int
    name: bytes
    entry: tuple[int, ...] | None = None  # readdirplus: the entry_out fields


def dirents(payload: bytes, plus: bool = False) -> list[Dirent]:
    out = []
    pos = 0
    head = abi.DIRENTPLUS if plus else abi.DIRENT
    while pos < len(payload):
        fields = head.unpack_from(payload, pos)
        ino, off, namelen, typ = fields[-4:]
        start = pos + head.size
        name = payload[start : start + namelen]
        size = (abi.direntplus_size if plus else abi.dirent_size)(namelen)
        assert payload[start + namelen : pos + size] == b"\0" * (size - head.size - namelen)
        out.append(Dirent(ino, off, typ, name, fields[:-4] if plus else None))
        pos += size
    assert pos == len(payload)
    return out


def entry_out(payload: bytes) -> tuple[int, ...]:
    assert len(payload) == abi.ENTRY_OUT.size
    return abi.ENTRY_OUT.unpack(payload)


ENTRY_NODEID, ENTRY_GEN, ENTRY_VALID, ATTR_VALID = 0, 1, 2, 3
ENTRY_ATTR = 6  # index of fuse_attr.ino inside entry_out; attr fields follow in order
ATTR_FIELDS = list(Attr._fields)


def attr_of_entry(fields: tuple[int, ...]) -> dict[str, int]:
    return dict(zip(ATTR_FIELDS, fields[ENTRY_ATTR : ENTRY_ATTR + 16], strict=True))


def attr_out(payload: bytes) -> dict[str, int]:
    assert len(payload) == abi.ATTR_OUT.size
    fields = abi.ATTR_OUT.unpack(payload)
    return dict(zip(ATTR_FIELDS, fields[3:], strict=True))


def u32(payload: bytes) -> int:
    return int(struct.unpack_from("<I", payload)[0])


__all__ = ["BIG", "Opcode", "parse", "request"]


class BufferChain:
    """A descriptor chain stand-in for ``Server.handle_into``: the request, and a reply
    area cut into ``seg``-byte pieces the way guest buffers are scattered."""

    def __init__(self, request: bytes, write_len: int, seg: int = 4096) -> None:
        self.request = request
        self.write_len = write_len
        self.buf = bytearray(write_len)
        self.seg = seg

    def read(self) -> bytes:
        return self.request

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        n = max(0, min(len(data), self.write_len - offset))
        self.buf[offset : offset + n] = bytes(data[:n])
        return n

    def write_buffers(self, offset: int, size: int) -> list[memoryview]:
        end = min(offset + size, self.write_len)
        view = memoryview(self.buf)
        out = []
        while offset < end:
            cut = min(end, (offset // self.seg + 1) * self.seg)
            out.append(view[offset:cut])
            offset = cut
        return out
