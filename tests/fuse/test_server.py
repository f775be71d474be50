"""The FUSE server driven with raw request bytes, over a small in-memory file system."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from virtiofsd_nydus.errors import BackendError, ImageError
from virtiofsd_nydus.fuse import abi
from virtiofsd_nydus.fuse.abi import Opcode
from virtiofsd_nydus.fuse.filesystem import FileSystem
from virtiofsd_nydus.fuse.server import DEFAULT_WANT, Server

from .memfs import MemFS, sample
from .wire import (
    BIG,
    ENTRY_NODEID,
    KERNEL_FLAGS,
    KERNEL_FLAGS2,
    attr_of_entry,
    attr_out,
    cstr,
    dirents,
    entry_out,
    init_body,
    init_out,
    parse,
    read_in,
    request,
    u32,
)


def started(fs: FileSystem | None = None, **kw: int) -> tuple[Server, MemFS]:
    mem = fs if fs is not None else sample()[0]
    srv = Server(mem, **kw)
    r = parse(srv.handle(request(Opcode.INIT, init_body(38, KERNEL_FLAGS, KERNEL_FLAGS2)), BIG))
    assert r.error == 0
    assert isinstance(mem, MemFS)
    return srv, mem


def call(
    srv: Server, opcode: int, body: bytes = b"", nodeid: int = 1, max_reply: int = BIG, **kw: int
):  # type: ignore[no-untyped-def]
    return parse(srv.handle(request(opcode, body, nodeid=nodeid, **kw), max_reply))


def lookup(srv: Server, parent: int, name: bytes):  # type: ignore[no-untyped-def]
    return call(srv, Opcode.LOOKUP, cstr(name), nodeid=parent)


# --- INIT ----------------------------------------------------------------------------------


def test_init_negotiates_7_38_and_our_flags() -> None:
    fs, _ = sample()
    srv = Server(fs, max_pages=64)
    r = parse(
        srv.handle(request(Opcode.INIT, init_body(38, KERNEL_FLAGS, KERNEL_FLAGS2), unique=5), BIG)
    )
    assert (r.error, r.unique) == (0, 5)
    out = init_out(r.payload)
    assert (out.major, out.minor) == (7, 38)
    assert out.flags == (DEFAULT_WANT & KERNEL_FLAGS) | abi.INIT_EXT
    assert out.flags & abi.DO_READDIRPLUS and out.flags & abi.MAX_PAGES
    assert not out.flags & (abi.WRITEBACK_CACHE | abi.POSIX_LOCKS | abi.EXPORT_SUPPORT)
    assert out.flags2 == 0  # we want no high flags by default
    assert (out.max_pages, out.max_write) == (64, 64 * 4096)
    assert out.time_gran == 1 and out.max_readahead == 1 << 17
    assert srv.initialized and srv.proto_minor == 38
    assert fs.inits == [KERNEL_FLAGS | abi.INIT_EXT | KERNEL_FLAGS2 << 32]


def test_init_ext_carries_flags2_both_ways() -> None:
    fs = MemFS(want=abi.HAS_EXPIRE_ONLY | abi.SUBMOUNTS)
    srv = Server(fs)
    r = parse(srv.handle(request(Opcode.INIT, init_body(38, KERNEL_FLAGS, KERNEL_FLAGS2)), BIG))
    out = init_out(r.payload)
    assert out.flags & abi.SUBMOUNTS and out.flags & abi.INIT_EXT
    assert out.flags2 == abi.HAS_EXPIRE_ONLY >> 32


def test_init_compat_16_byte_body_from_an_older_guest() -> None:
    # A 5.10 guest (7.31) sends only major/minor/max_readahead/flags; no flags2 to read.
    fs = MemFS(want=abi.HAS_EXPIRE_ONLY)
    srv = Server(fs)
    r = parse(srv.handle(request(Opcode.INIT, init_body(31, KERNEL_FLAGS)), BIG))
    out = init_out(r.payload)
    assert out.minor == 38 and out.flags2 == 0 and not out.flags & abi.INIT_EXT
    assert out.flags == DEFAULT_WANT & KERNEL_FLAGS
    assert srv.proto_minor == 31


def test_init_ext_flag_without_the_long_body_is_ignored() -> None:
    srv = Server(MemFS(want=abi.HAS_EXPIRE_ONLY))
    body = abi.INIT_IN_COMPAT.pack(7, 38, 0, abi.INIT_EXT | abi.ASYNC_READ)
    out = init_out(parse(srv.handle(request(Opcode.INIT, body), BIG)).payload)
    assert out.flags2 == 0 and out.flags == abi.ASYNC_READ | abi.INIT_EXT


@pytest.mark.parametrize(("major", "minor"), [(7, 26), (7, 0), (6, 99), (0, 0)])
def test_init_rejects_old_protocols(major: int, minor: int) -> None:
    srv = Server(MemFS())
    r = parse(srv.handle(request(Opcode.INIT, init_body(minor, 0, major=major)), BIG))
    assert r.error == errno.EPROTO
    assert not srv.initialized


def test_init_newer_major_gets_our_version_to_retry_with() -> None:
    srv = Server(MemFS())
    out = init_out(parse(srv.handle(request(Opcode.INIT, init_body(0, 0, major=8)), BIG)).payload)
    assert (out.major, out.minor, out.flags) == (7, 38, 0)
    assert not srv.initialized
    parse(srv.handle(request(Opcode.INIT, init_body(38, 0)), BIG))
    assert srv.initialized


def test_requests_before_init_get_eio_and_forgets_nothing() -> None:
    srv = Server(sample()[0])
    assert lookup(srv, 1, b"hello").error == errno.EIO
    assert srv.handle(request(Opcode.FORGET, abi.FORGET_IN.pack(1), nodeid=2), BIG) is None


def test_second_init_resets_the_session() -> None:
    srv, fs = started()
    ino = entry_out(lookup(srv, 1, b"hello").payload)[ENTRY_NODEID]
    assert fs.lookups[ino] == 1
    r = parse(srv.handle(request(Opcode.INIT, init_body(38, KERNEL_FLAGS)), BIG))
    assert r.error == 0
    assert fs.destroys == 1 and len(fs.inits) == 2
    assert fs.lookups[ino] == 0


def test_destroy_ends_the_session() -> None:
    srv, fs = started()
    assert call(srv, Opcode.DESTROY).error == 0
    assert fs.destroys == 1 and not srv.initialized
    assert lookup(srv, 1, b"hello").error == errno.EIO
    started(fs)


def test_reset_from_outside_ends_the_session() -> None:
    srv, fs = started()
    lookup(srv, 1, b"hello")
    srv.reset()
    assert fs.destroys == 1 and not fs.lookups and not srv.initialized
    assert lookup(srv, 1, b"hello").error == errno.EIO
    srv.reset()  # idempotent
    assert fs.destroys == 1


def test_server_rejects_silly_max_pages() -> None:
    with pytest.raises(ValueError):
        Server(MemFS(), max_pages=0)


# --- framing and validation ------------------------------------------------------------------


def test_short_header_gets_einval_with_unique_zero() -> None:
    srv, _ = started()
    r = parse(srv.handle(b"\x01" * 39, BIG))
    assert (r.error, r.unique) == (errno.EINVAL, 0)
    assert srv.handle(b"", 8) is None  # no room for even a header
    assert srv.malformed == 2


def test_len_field_beyond_the_bytes_given_is_einval() -> None:
    srv, _ = started()
    raw = bytearray(request(Opcode.LOOKUP, cstr(b"hello"), unique=77))
    raw[0:4] = (len(raw) + 1).to_bytes(4, "little")
    r = parse(srv.handle(bytes(raw), BIG))
    assert (r.error, r.unique) == (errno.EINVAL, 77)


def test_len_field_shorter_than_the_header_is_einval() -> None:
    srv, _ = started()
    raw = bytearray(request(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0)))
    raw[0:4] = (39).to_bytes(4, "little")
    assert parse(srv.handle(bytes(raw), BIG)).error == errno.EINVAL


def test_trailing_bytes_beyond_len_are_ignored() -> None:
    srv, _ = started()
    r = parse(srv.handle(request(Opcode.LOOKUP, cstr(b"hello")) + b"junk", BIG))
    assert r.error == 0


def test_extensions_are_cut_off_by_total_extlen() -> None:
    srv, _ = started()
    ext = b"\x08\x00\x00\x00\x20\x00\x00\x00"  # an 8-byte fuse_ext_header (supp groups)
    r = call(srv, Opcode.LOOKUP, cstr(b"hello") + ext, extlen=1)
    assert r.error == 0
    assert call(srv, Opcode.LOOKUP, cstr(b"hello"), extlen=200).error == errno.EINVAL


@pytest.mark.parametrize("opcode", [31, 32, 33, 37, 39, 40, 48, 49, 52, 53, 99, 4096, 2**32 - 1])
def test_unknown_or_unsupported_opcode_is_enosys(opcode: int) -> None:
    srv, _ = started()
    assert call(srv, opcode, b"\0" * 64).error == errno.ENOSYS


@pytest.mark.parametrize(
    ("name", "code"),
    [
        (b"", errno.EINVAL),
        (b"a/b", errno.EINVAL),
        (b".", errno.EINVAL),
        (b"..", errno.EINVAL),
        (b"x" * 256, errno.ENAMETOOLONG),
        (b"x" * 255, errno.ENOENT),
    ],
)
def test_lookup_names_are_validated(name: bytes, code: int) -> None:
    srv, _ = started()
    assert lookup(srv, 1, name).error == code


def test_lookup_name_without_nul_is_einval() -> None:
    srv, _ = started()
    assert call(srv, Opcode.LOOKUP, b"hello").error == errno.EINVAL
    assert call(srv, Opcode.LOOKUP, b"x" * 300).error == errno.ENAMETOOLONG


def test_name_with_embedded_nul_stops_at_the_first() -> None:
    srv, _ = started()
    assert call(srv, Opcode.LOOKUP, b"hello\0junk\0").error == 0


@pytest.mark.parametrize(
    "opcode",
    [
        Opcode.GETATTR,
        Opcode.OPEN,
        Opcode.READ,
        Opcode.RELEASE,
        Opcode.READDIR,
        Opcode.READDIRPLUS,
        Opcode.GETXATTR,
        Opcode.LISTXATTR,
        Opcode.ACCESS,
        Opcode.LSEEK,
        Opcode.FLUSH,
        Opcode.FSYNC,
        Opcode.OPENDIR,
        Opcode.RELEASEDIR,
        Opcode.SETATTR,
        Opcode.MKDIR,
        Opcode.WRITE,
        Opcode.RENAME2,
        Opcode.CREATE,
        Opcode.INIT,
    ],
)
def test_truncated_arguments_are_einval(opcode: int) -> None:
    srv, _ = started()
    assert call(srv, opcode, b"\0" * 3).error == errno.EINVAL


def test_reply_buffer_too_small_is_einval_and_none_below_a_header() -> None:
    srv, _ = started()
    assert lookup(srv, 1, b"hello").error == 0
    r = parse(srv.handle(request(Opcode.LOOKUP, cstr(b"hello")), 100))
    assert r.error == errno.EINVAL
    assert srv.handle(request(Opcode.LOOKUP, cstr(b"hello")), 15) is None


# --- names and attributes -------------------------------------------------------------------


def test_lookup_returns_the_entry_and_counts() -> None:
    srv, fs = started()
    r = lookup(srv, 1, b"hello")
    e = entry_out(r.payload)
    a = attr_of_entry(e)
    assert e[ENTRY_NODEID] == a["ino"] == 2
    assert e[2] == 86400 and e[3] == 86400  # entry_valid, attr_valid: CachePolicy.ALWAYS
    assert stat.S_ISREG(a["mode"]) and a["size"] == 12 and a["mtimensec"] == 6
    lookup(srv, 1, b"hello")
    assert fs.lookups[2] == 2


def test_lookup_errors() -> None:
    srv, _ = started()
    assert lookup(srv, 1, b"nope").error == errno.ENOENT
    assert lookup(srv, 2, b"x").error == errno.ENOTDIR  # hello is a file
    assert lookup(srv, 999, b"x").error == errno.ENOENT


def test_negative_lookup_is_cached_when_the_fs_says_so() -> None:
    fs, _ = sample()
    fs.negative = True
    srv, _ = started(fs)
    e = entry_out(lookup(srv, 1, b"nope").payload)
    assert e[ENTRY_NODEID] == 0 and e[2] == 86400
    assert lookup(srv, 2, b"x").error == errno.ENOTDIR  # only ENOENT becomes an entry


def test_forget_and_batch_forget_drop_counts_without_reply() -> None:
    srv, fs = started()
    for _ in range(3):
        lookup(srv, 1, b"hello")
        lookup(srv, 1, b"sub")
    assert srv.handle(request(Opcode.FORGET, abi.FORGET_IN.pack(2), nodeid=2), BIG) is None
    assert fs.lookups[2] == 1
    body = abi.BATCH_FORGET_IN.pack(2, 0) + abi.FORGET_ONE.pack(2, 1) + abi.FORGET_ONE.pack(3, 3)
    assert srv.handle(request(Opcode.BATCH_FORGET, body), BIG) is None
    assert fs.lookups[2] == 0 and fs.lookups[3] == 0


def test_batch_forget_with_a_lying_count_only_uses_what_is_there() -> None:
    srv, fs = started()
    lookup(srv, 1, b"hello")
    body = abi.BATCH_FORGET_IN.pack(1000, 0) + abi.FORGET_ONE.pack(2, 1) + b"\1\2\3"
    assert srv.handle(request(Opcode.BATCH_FORGET, body), 0) is None
    assert fs.lookups[2] == 0
    assert srv.handle(request(Opcode.FORGET, b"\1"), 0) is None  # truncated: ignored


def test_getattr_readlink_statfs_access() -> None:
    srv, _ = started()
    a = attr_out(call(srv, Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0), nodeid=4).payload)
    assert stat.S_ISLNK(a["mode"]) and a["size"] == 5
    assert call(srv, Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0), nodeid=99).error == errno.ENOENT
    assert call(srv, Opcode.READLINK, nodeid=4).payload == b"hello"
    assert call(srv, Opcode.READLINK, nodeid=2).error == errno.EINVAL
    st = abi.STATFS_OUT.unpack(call(srv, Opcode.STATFS).payload)
    assert st[:8] == (100, 0, 0, 44, 0, 4096, 255, 4096)
    assert call(srv, Opcode.ACCESS, abi.ACCESS_IN.pack(os.R_OK, 0)).error == 0
    assert call(srv, Opcode.ACCESS, abi.ACCESS_IN.pack(os.W_OK, 0)).error == errno.EROFS


def test_xattr_size_rules() -> None:
    srv, _ = started()
    get = abi.GETXATTR_IN.pack
    r = call(srv, Opcode.GETXATTR, get(0, 0) + cstr(b"user.bb"), nodeid=2)
    assert (r.error, u32(r.payload), len(r.payload)) == (0, 2, 8)
    assert call(srv, Opcode.GETXATTR, get(2, 0) + cstr(b"user.bb"), nodeid=2).payload == b"22"
    assert call(srv, Opcode.GETXATTR, get(1, 0) + cstr(b"user.bb"), nodeid=2).error == errno.ERANGE
    assert call(srv, Opcode.GETXATTR, get(9, 0) + cstr(b"user.zz"), nodeid=2).error == errno.ENODATA
    assert call(srv, Opcode.GETXATTR, get(0, 0) + cstr(b"user.zz"), nodeid=2).error == errno.ENODATA
    assert call(srv, Opcode.GETXATTR, get(9, 0) + cstr(b""), nodeid=2).error == errno.EINVAL
    assert call(srv, Opcode.GETXATTR, get(9, 0) + b"a" * 300, nodeid=2).error == errno.ERANGE
    assert call(srv, Opcode.GETXATTR, get(9, 0) + b"user.a", nodeid=2).error == errno.EINVAL
    names = b"user.a\0user.bb\0"
    r = call(srv, Opcode.LISTXATTR, get(0, 0), nodeid=2)
    assert u32(r.payload) == len(names)
    assert call(srv, Opcode.LISTXATTR, get(len(names), 0), nodeid=2).payload == names
    assert call(srv, Opcode.LISTXATTR, get(len(names) - 1, 0), nodeid=2).error == errno.ERANGE
    r = call(srv, Opcode.LISTXATTR, get(0, 0), nodeid=3)  # no xattrs: size 0
    assert u32(r.payload) == 0


# --- files ------------------------------------------------------------------------------------


def test_open_read_release() -> None:
    srv, _ = started()
    fh, oflags, _ = abi.OPEN_OUT.unpack(
        call(srv, Opcode.OPEN, abi.OPEN_IN.pack(os.O_RDONLY, 0), nodeid=2).payload
    )
    assert (fh, oflags) == (7, abi.FOPEN_KEEP_CACHE)
    assert call(srv, Opcode.READ, read_in(fh, 0, 4096), nodeid=2).payload == b"hello world\n"
    assert call(srv, Opcode.READ, read_in(fh, 6, 3), nodeid=2).payload == b"wor"
    assert call(srv, Opcode.READ, read_in(fh, 12, 10), nodeid=2).payload == b""  # EOF
    assert call(srv, Opcode.READ, read_in(fh, 1 << 40, 10), nodeid=2).payload == b""
    assert call(srv, Opcode.READ, read_in(fh, 1 << 63, 10), nodeid=2).error == errno.EINVAL
    # The reply never exceeds the guest's buffer.
    assert call(srv, Opcode.READ, read_in(fh, 0, 4096), nodeid=2, max_reply=16 + 5).payload == (
        b"hello"
    )
    assert call(srv, Opcode.FLUSH, abi.FLUSH_IN.pack(fh, 0, 0, 0), nodeid=2).error == 0
    assert call(srv, Opcode.FSYNC, abi.FSYNC_IN.pack(fh, 1, 0), nodeid=2).error == 0
    assert call(srv, Opcode.RELEASE, abi.RELEASE_IN.pack(fh, 0, 0, 0), nodeid=2).error == 0
    assert call(srv, Opcode.SYNCFS, abi.SYNCFS_IN.pack(0)).error == 0
    assert call(srv, Opcode.OPEN, abi.OPEN_IN.pack(0, 0), nodeid=1).error == errno.EISDIR


def test_read_is_capped_at_max_write() -> None:
    fs, inos = sample()
    fs.nodes[inos["hello"]].data = b"z" * 10000
    srv, _ = started(fs, max_pages=1)
    r = call(srv, Opcode.READ, read_in(0, 0, 10000), nodeid=inos["hello"])
    assert r.payload == b"z" * 4096


def test_lseek() -> None:
    srv, _ = started()
    seek = abi.LSEEK_IN.pack
    r = call(srv, Opcode.LSEEK, seek(0, 3, abi.SEEK_DATA, 0), nodeid=2)
    assert abi.LSEEK_OUT.unpack(r.payload) == (3,)
    r = call(srv, Opcode.LSEEK, seek(0, 3, abi.SEEK_HOLE, 0), nodeid=2)
    assert abi.LSEEK_OUT.unpack(r.payload) == (12,)
    assert call(srv, Opcode.LSEEK, seek(0, 12, abi.SEEK_DATA, 0), nodeid=2).error == errno.ENXIO
    assert call(srv, Opcode.LSEEK, seek(0, 0, os.SEEK_SET, 0), nodeid=2).error == errno.EINVAL


# --- directories -------------------------------------------------------------------------------


def _readdir_all(srv: Server, ino: int, size: int, plus: bool) -> list:  # type: ignore[type-arg]
    op = Opcode.READDIRPLUS if plus else Opcode.READDIR
    fh, _, _ = abi.OPEN_OUT.unpack(
        call(srv, Opcode.OPENDIR, abi.OPEN_IN.pack(0, 0), nodeid=ino).payload
    )
    got = []
    offset = 0
    for _ in range(1000):
        r = call(srv, op, read_in(fh, offset, size), nodeid=ino)
        assert r.error == 0
        batch = dirents(r.payload, plus=plus)
        if not batch:
            break
        assert len(r.payload) <= size
        got += batch
        offset = batch[-1].off
    assert call(srv, Opcode.RELEASEDIR, abi.RELEASE_IN.pack(fh, 0, 0, 0), nodeid=ino).error == 0
    return got


@pytest.mark.parametrize("size", [4096, 200, 72])
def test_readdir_resumes_across_small_buffers(size: int) -> None:
    fs, inos = sample()
    srv, _ = started(fs)
    got = _readdir_all(srv, inos["sub"], size, plus=False)
    names = [d.name for d in got]
    assert names == [b".", b"..", *sorted(fs.nodes[inos["sub"]].children)]
    assert got[0].ino == inos["sub"] and got[1].ino == 1
    assert {d.type for d in got[2:]} == {stat.S_IFREG >> 12}


def test_readdir_buffer_too_small_for_one_entry_is_empty() -> None:
    srv, _ = started()
    assert call(srv, Opcode.READDIR, read_in(0, 0, 24)).payload == b""


def test_readdir_of_a_file_is_enotdir() -> None:
    srv, _ = started()
    assert call(srv, Opcode.OPENDIR, abi.OPEN_IN.pack(0, 0), nodeid=2).error == errno.ENOTDIR


@pytest.mark.parametrize("size", [4096, 400])
def test_readdirplus_counts_a_lookup_per_entry_sent(size: int) -> None:
    fs, inos = sample()
    srv, _ = started(fs)
    got = _readdir_all(srv, inos["sub"], size, plus=True)
    assert len(got) == 42
    assert got[0].entry is not None and got[0].entry[ENTRY_NODEID] == 0  # "." has no entry
    for d in got[2:]:
        assert d.entry is not None and d.entry[ENTRY_NODEID] == d.ino
        assert attr_of_entry(d.entry)["ino"] == d.ino
        assert fs.lookups[d.ino] == 1  # exactly once, even when a record did not fit
    assert sum(fs.lookups.values()) == 40


# --- read-only and failures ---------------------------------------------------------------------

_W = (
    (Opcode.SETATTR, abi.SETATTR_IN.pack(abi.FATTR_MODE, *[0] * 15)),
    (Opcode.SYMLINK, cstr(b"new", b"target")),
    (Opcode.MKNOD, abi.MKNOD_IN.pack(0o644, 0, 0, 0) + cstr(b"new")),
    (Opcode.MKDIR, abi.MKDIR_IN.pack(0o755, 0) + cstr(b"new")),
    (Opcode.UNLINK, cstr(b"hello")),
    (Opcode.RMDIR, cstr(b"sub")),
    (Opcode.RENAME, abi.RENAME_IN.pack(1) + cstr(b"hello", b"bye")),
    (Opcode.RENAME2, abi.RENAME2_IN.pack(1, 0, 0) + cstr(b"hello", b"bye")),
    (Opcode.LINK, abi.LINK_IN.pack(2) + cstr(b"hard")),
    (Opcode.WRITE, abi.WRITE_IN.pack(0, 0, 3, 0, 0, 0, 0) + b"abc"),
    (Opcode.SETXATTR, abi.SETXATTR_IN_COMPAT.pack(1, 0) + cstr(b"user.x") + b"v"),
    (Opcode.REMOVEXATTR, cstr(b"user.a")),
    (Opcode.CREATE, abi.CREATE_IN.pack(os.O_CREAT | os.O_WRONLY, 0o644, 0, 0) + cstr(b"new")),
    (Opcode.TMPFILE, abi.CREATE_IN.pack(os.O_WRONLY, 0o644, 0, 0) + cstr(b"t")),
    (Opcode.FALLOCATE, abi.FALLOCATE_IN.pack(0, 0, 10, 0, 0)),
    (Opcode.COPY_FILE_RANGE, abi.COPY_FILE_RANGE_IN.pack(0, 0, 2, 0, 0, 10, 0)),
)


@pytest.mark.parametrize(("opcode", "body"), _W, ids=[op.name for op, _ in _W])
def test_every_write_op_is_erofs(opcode: int, body: bytes) -> None:
    srv, _ = started()
    assert call(srv, opcode, body).error == errno.EROFS


def test_malformed_write_ops_are_einval_before_reaching_the_fs() -> None:
    srv, _ = started()
    assert call(srv, Opcode.WRITE, abi.WRITE_IN.pack(0, 0, 30, 0, 0, 0, 0) + b"abc").error == (
        errno.EINVAL
    )
    assert call(srv, Opcode.SYMLINK, cstr(b"new") + b"unterminated").error == errno.EINVAL
    assert call(srv, Opcode.RENAME, abi.RENAME_IN.pack(1) + cstr(b"a/b", b"c")).error == (
        errno.EINVAL
    )
    assert (
        call(
            srv, Opcode.SETXATTR, abi.SETXATTR_IN_COMPAT.pack(50, 0) + cstr(b"user.x") + b"v"
        ).error
        == errno.EINVAL
    )


class Failing(MemFS):
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    def getattr(self, ino, fh):  # type: ignore[no-untyped-def]
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ImageError("bad chunk"), errno.EIO),
        (BackendError("registry down"), errno.EIO),
        (RuntimeError("bug"), errno.EIO),
        (OSError(errno.EACCES, "no"), errno.EACCES),
        (OSError(0, "zero errno"), errno.EIO),
        (OSError(99999, "huge errno"), errno.EIO),
        (OSError("no errno"), errno.EIO),
    ],
)
def test_fs_exceptions_become_errnos(exc: BaseException, code: int) -> None:
    srv, _ = started(Failing(exc))
    assert call(srv, Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0)).error == code


def test_base_filesystem_answers_enosys_and_erofs() -> None:
    srv = Server(FileSystem())
    parse(srv.handle(request(Opcode.INIT, init_body()), BIG))
    assert call(srv, Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0)).error == errno.ENOSYS
    assert lookup(srv, 1, b"x").error == errno.ENOSYS
    assert call(srv, Opcode.MKDIR, abi.MKDIR_IN.pack(0, 0) + cstr(b"d")).error == errno.EROFS
    assert call(srv, Opcode.FSYNC, abi.FSYNC_IN.pack(0, 0, 0)).error == 0


def test_interrupt_gets_no_reply() -> None:
    srv, _ = started()
    assert srv.handle(request(Opcode.INTERRUPT, abi.INTERRUPT_IN.pack(5)), BIG) is None


def test_stats_count_requests_and_errors_by_name() -> None:
    srv, _ = started()
    lookup(srv, 1, b"hello")
    lookup(srv, 1, b"nope")
    call(srv, 200)
    s = srv.stats()
    assert s["INIT"] == (1, 0)
    assert s["LOOKUP"] == (2, 1)
    assert s["UNKNOWN"] == (1, 1)
