"""FUSE 7.38 wire format as the guest kernel speaks it: request encoders, reply decoders.

Written from linux/include/uapi/linux/fuse.h with `struct` only, never from the daemon's
code: this module is a test oracle and must not share the daemon's bugs.
"""

from __future__ import annotations

import enum
import errno as _errno
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

KERNEL_MAJOR = 7
KERNEL_MINOR = 38
ROOT_ID = 1


class Op(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    ACCESS = 34
    CREATE = 35
    DESTROY = 38
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SYNCFS = 50
    TMPFILE = 51


# FUSE_INIT flags (low 32 bits in `flags`, high 32 in `flags2` when INIT_EXT is set).
ASYNC_READ = 1 << 0
BIG_WRITES = 1 << 5
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
SUBMOUNTS = 1 << 27
INIT_EXT = 1 << 30
HAS_EXPIRE_ONLY = 1 << 35  # a flags2 bit (sent as 1 << 3 in flags2)
# What a Linux 6.x virtio-fs guest typically offers (without the DAX / security bits).
KERNEL_INIT_FLAGS = (
    ASYNC_READ
    | (1 << 1)  # POSIX_LOCKS
    | (1 << 3)  # ATOMIC_O_TRUNC
    | (1 << 4)  # EXPORT_SUPPORT
    | BIG_WRITES
    | (1 << 6)  # DONT_MASK
    | (1 << 10)  # FLOCK_LOCKS
    | (1 << 11)  # HAS_IOCTL_DIR
    | (1 << 12)  # AUTO_INVAL_DATA
    | DO_READDIRPLUS
    | READDIRPLUS_AUTO
    | (1 << 15)  # ASYNC_DIO
    | (1 << 16)  # WRITEBACK_CACHE
    | (1 << 17)  # NO_OPEN_SUPPORT
    | PARALLEL_DIROPS
    | (1 << 19)  # HANDLE_KILLPRIV
    | (1 << 20)  # POSIX_ACL
    | (1 << 21)  # ABORT_ERROR
    | MAX_PAGES
    | CACHE_SYMLINKS
    | (1 << 24)  # NO_OPENDIR_SUPPORT
    | (1 << 25)  # EXPLICIT_INVAL_DATA
    | SUBMOUNTS
    | (1 << 28)  # HANDLE_KILLPRIV_V2
    | (1 << 29)  # SETXATTR_EXT
    | INIT_EXT
)

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_OUT_HEAD = struct.Struct("<QQQQII")
ATTR_OUT_HEAD = struct.Struct("<QII")
INIT_IN = struct.Struct("<IIIII44x")
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
OPEN_OUT = struct.Struct("<QII")
READ_IN = struct.Struct("<QQIIQII")  # also fuse_write_in
RELEASE_IN = struct.Struct("<QIIQ")  # also fuse_flush_in
GETATTR_IN = struct.Struct("<IIQ")
PAIR_U32 = struct.Struct("<II")  # open_in, mkdir_in, getxattr_in/out, access_in, write_out
PAIR_U64 = struct.Struct("<QQ")  # forget_one
CREATE_IN = struct.Struct("<IIII")
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
LSEEK_IN = struct.Struct("<QQII")
U64 = struct.Struct("<Q")
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
DIRENT_HEAD = struct.Struct("<QQII")

assert IN_HEADER.size == 40 and OUT_HEADER.size == 16 and ATTR.size == 88
assert ENTRY_OUT_HEAD.size + ATTR.size == 128 and ATTR_OUT_HEAD.size + ATTR.size == 104
assert INIT_IN.size == 64 and INIT_OUT.size == 64 and READ_IN.size == 40
assert SETATTR_IN.size == 88 and STATFS_OUT.size == 80

ENTRY_OUT_SIZE = 128
ATTR_OUT_SIZE = 104
GETATTR_FH = 1
FATTR_MODE = 1 << 0
FATTR_SIZE = 1 << 3


class FuseError(OSError):
    """The server answered a request with an error reply (-errno in out_header.error)."""

    def __init__(self, err: int, op: int | str) -> None:
        name = Op(op).name if isinstance(op, int) and op in Op._value2member_map_ else op
        super().__init__(err, f"{name}: {_errno.errorcode.get(err, '?')} ({err})")
        self.op = op


class ReplyFormatError(ValueError):
    """A reply does not have the shape FUSE requires (a server bug worth a test failure)."""


# ---------------------------------------------------------------- requests


def in_header(
    opcode: int,
    unique: int,
    nodeid: int,
    args_len: int,
    *,
    uid: int = 0,
    gid: int = 0,
    pid: int = 0,
) -> bytes:
    return IN_HEADER.pack(IN_HEADER.size + args_len, opcode, unique, nodeid, uid, gid, pid, 0, 0)


def request(opcode: int, unique: int, nodeid: int, args: bytes = b"", **ids: int) -> bytes:
    """One whole request: fuse_in_header followed by the op's arguments."""
    return in_header(opcode, unique, nodeid, len(args), **ids) + args


def cstr(name: bytes) -> bytes:
    return name + b"\0"


def init_in(
    flags: int = KERNEL_INIT_FLAGS,
    flags2: int = 0,
    max_readahead: int = 1 << 17,
    minor: int = KERNEL_MINOR,
) -> bytes:
    return INIT_IN.pack(KERNEL_MAJOR, minor, max_readahead, flags & 0xFFFFFFFF, flags2)


def lookup_in(name: bytes) -> bytes:
    return cstr(name)


def forget_in(nlookup: int) -> bytes:
    return U64.pack(nlookup)


def batch_forget_in(items: Iterable[tuple[int, int]]) -> bytes:
    pairs = list(items)
    return PAIR_U32.pack(len(pairs), 0) + b"".join(PAIR_U64.pack(n, c) for n, c in pairs)


def getattr_in(fh: int | None = None) -> bytes:
    return GETATTR_IN.pack(0 if fh is None else GETATTR_FH, 0, fh or 0)


def open_in(flags: int = os.O_RDONLY) -> bytes:
    return PAIR_U32.pack(flags, 0)


def read_in(fh: int, offset: int, size: int, flags: int = os.O_RDONLY) -> bytes:
    return READ_IN.pack(fh, offset, size, 0, 0, flags, 0)


def write_in(fh: int, offset: int, data: bytes) -> bytes:
    return READ_IN.pack(fh, offset, len(data), 0, 0, os.O_WRONLY, 0) + data


def release_in(fh: int, flags: int = os.O_RDONLY) -> bytes:
    return RELEASE_IN.pack(fh, flags, 0, 0)


def flush_in(fh: int) -> bytes:
    return RELEASE_IN.pack(fh, 0, 0, 0)


def getxattr_in(name: bytes, size: int) -> bytes:
    return PAIR_U32.pack(size, 0) + cstr(name)


def listxattr_in(size: int) -> bytes:
    return PAIR_U32.pack(size, 0)


def access_in(mask: int) -> bytes:
    return PAIR_U32.pack(mask, 0)


def lseek_in(fh: int, offset: int, whence: int) -> bytes:
    return LSEEK_IN.pack(fh, offset, whence, 0)


def mkdir_in(name: bytes, mode: int = 0o755, umask: int = 0o022) -> bytes:
    return PAIR_U32.pack(mode, umask) + cstr(name)


def create_in(name: bytes, flags: int, mode: int = 0o644, umask: int = 0o022) -> bytes:
    return CREATE_IN.pack(flags, mode, umask, 0) + cstr(name)


def setattr_in(*, size: int | None = None, mode: int | None = None) -> bytes:
    valid = (FATTR_SIZE if size is not None else 0) | (FATTR_MODE if mode is not None else 0)
    return SETATTR_IN.pack(valid, 0, 0, size or 0, 0, 0, 0, 0, 0, 0, 0, mode or 0, 0, 0, 0, 0)


# ---------------------------------------------------------------- replies


@dataclass(frozen=True)
class Attr:
    ino: int
    size: int
    blocks: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int
    flags: int


@dataclass(frozen=True)
class EntryOut:
    nodeid: int
    generation: int
    entry_valid: int
    attr_valid: int
    entry_valid_nsec: int
    attr_valid_nsec: int
    attr: Attr


@dataclass(frozen=True)
class AttrOut:
    attr_valid: int
    attr_valid_nsec: int
    attr: Attr


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class OpenOut:
    fh: int
    open_flags: int


@dataclass(frozen=True)
class StatfsOut:
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int
    frsize: int


@dataclass(frozen=True)
class Dirent:
    ino: int
    off: int
    type: int
    name: bytes
    entry: EntryOut | None = None  # READDIRPLUS only


@dataclass(frozen=True)
class OutHeader:
    len: int
    error: int
    unique: int


def _need(data: bytes | memoryview, size: int, what: str) -> None:
    if len(data) < size:
        raise ReplyFormatError(f"{what}: {len(data)} bytes, need {size}")


def out_header(data: bytes | memoryview) -> OutHeader:
    _need(data, OUT_HEADER.size, "out_header")
    return OutHeader(*OUT_HEADER.unpack_from(data))


def check_reply(data: bytes | memoryview, unique: int, op: int | str) -> memoryview:
    """Validate the out_header against the bytes written; return the payload or raise."""
    hdr = out_header(data)
    if hdr.unique != unique:
        raise ReplyFormatError(f"reply unique {hdr.unique} != request {unique}")
    if hdr.len != len(data):
        raise ReplyFormatError(f"out_header.len {hdr.len} != {len(data)} bytes written")
    if hdr.error > 0 or hdr.error < -4095:
        raise ReplyFormatError(f"out_header.error {hdr.error} is not a negative errno")
    if hdr.error:
        if hdr.len != OUT_HEADER.size:
            raise ReplyFormatError(f"error reply with {hdr.len - 16} payload bytes")
        raise FuseError(-hdr.error, op)
    return memoryview(data)[OUT_HEADER.size :]


def attr(data: bytes | memoryview, offset: int = 0) -> Attr:
    return Attr(*ATTR.unpack_from(data, offset))


def entry_out(data: bytes | memoryview, offset: int = 0) -> EntryOut:
    _need(data, offset + ENTRY_OUT_SIZE, "entry_out")
    nodeid, gen, entry_valid, attr_valid, e_nsec, a_nsec = ENTRY_OUT_HEAD.unpack_from(data, offset)
    a = attr(data, offset + ENTRY_OUT_HEAD.size)
    return EntryOut(nodeid, gen, entry_valid, attr_valid, e_nsec, a_nsec, a)


def attr_out(data: bytes | memoryview) -> AttrOut:
    _need(data, ATTR_OUT_SIZE, "attr_out")
    valid, nsec, _ = ATTR_OUT_HEAD.unpack_from(data)
    return AttrOut(valid, nsec, attr(data, ATTR_OUT_HEAD.size))


def init_out(data: bytes | memoryview) -> InitOut:
    # Old servers may send the 24-byte compat form; pad so the decode is total.
    _need(data, 24, "init_out")
    return InitOut(*INIT_OUT.unpack(bytes(data[:64]).ljust(64, b"\0")))


def open_out(data: bytes | memoryview) -> OpenOut:
    _need(data, OPEN_OUT.size, "open_out")
    fh, flags, _ = OPEN_OUT.unpack_from(data)
    return OpenOut(fh, flags)


def statfs_out(data: bytes | memoryview) -> StatfsOut:
    _need(data, STATFS_OUT.size, "statfs_out")
    return StatfsOut(*STATFS_OUT.unpack_from(data)[:8])


def u32_first(data: bytes | memoryview) -> int:
    """fuse_getxattr_out.size / fuse_write_out.size."""
    _need(data, 8, "size reply")
    return int(PAIR_U32.unpack_from(data)[0])


def lseek_out(data: bytes | memoryview) -> int:
    _need(data, 8, "lseek_out")
    return int(U64.unpack_from(data)[0])


def dirents(data: bytes | memoryview, plus: bool) -> list[Dirent]:
    """Decode a READDIR/READDIRPLUS payload, checking every record's framing."""
    out: list[Dirent] = []
    pos = 0
    head = ENTRY_OUT_SIZE if plus else 0
    fixed = head + DIRENT_HEAD.size
    while pos < len(data):
        _need(data, pos + fixed, "dirent")
        entry = entry_out(data, pos) if plus else None
        ino, off, namelen, dtype = DIRENT_HEAD.unpack_from(data, pos + head)
        if namelen == 0 or namelen > 1024:
            raise ReplyFormatError(f"dirent namelen {namelen}")
        end = pos + fixed + namelen
        _need(data, end, "dirent name")
        name = bytes(data[pos + fixed : end])
        if b"/" in name or b"\0" in name:
            raise ReplyFormatError(f"dirent name {name!r}")
        out.append(Dirent(ino, off, dtype, name, entry))
        pos = (end + 7) & ~7
    if pos != len(data):
        raise ReplyFormatError("dirent list does not end on a record boundary")
    return out


def xattr_names(data: bytes | memoryview) -> list[bytes]:
    raw = bytes(data)
    if raw and not raw.endswith(b"\0"):
        raise ReplyFormatError("listxattr names not NUL-terminated")
    return raw.split(b"\0")[:-1] if raw else []
