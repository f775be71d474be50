"""Every FUSE opcode and its error paths, through the vhost-user front-end, against our
daemon serving a converted image (inline and with --thread-pool-size 2)."""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import pytest

from tests.daemon.source import BIG_SIZE, BIG_XATTR, BIGDIR_ENTRIES, CHUNK, SPARSE_SIZE
from tests.frontend import fuse_abi as fa
from tests.frontend.client import FuseClient


def _errno(fn: object, *args: object) -> int:
    with pytest.raises(OSError) as e:
        fn(*args)  # type: ignore[operator]
    return int(e.value.errno or 0)


def _walk(fs: FuseClient, path: str) -> fa.EntryOut:
    node, entry = fa.ROOT_ID, None
    for part in path.encode().split(b"/"):
        entry = fs.lookup(node, part)
        node = entry.nodeid
    assert entry is not None
    return entry


def _same_attr(a: fa.Attr, st: os.stat_result) -> None:
    # A directory's size is the host file system's business: the image does not keep it.
    size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
    assert (a.mode, a.size, a.nlink, a.uid, a.gid) == (
        st.st_mode,
        size,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
    )
    assert (a.mtime, a.mtimensec) == (int(st.st_mtime), st.st_mtime_ns % 10**9)


@pytest.mark.parametrize(
    "path", ["hello.txt", "big.bin", "sub/deep/file", "sym", "fifo", "one/orig", "bigdir", "empty"]
)
def test_lookup_and_getattr_match_the_source(fs: FuseClient, source: Path, path: str) -> None:
    entry = _walk(fs, path)
    st = os.lstat(source / path)
    _same_attr(entry.attr, st)
    _same_attr(fs.getattr(entry.nodeid).attr, st)
    assert entry.attr.ino > 0


def test_device_node_keeps_its_rdev(fs: FuseClient, source: Path) -> None:
    if not (source / "null").exists():
        pytest.skip("no device node in the source (needs root)")
    a = fs.lookup(fa.ROOT_ID, b"null").attr
    assert stat.S_ISCHR(a.mode) and a.rdev == os.lstat(source / "null").st_rdev


def test_hard_links_share_an_inode(fs: FuseClient) -> None:
    a = _walk(fs, "one/orig")
    b = _walk(fs, "two/hard")
    assert a.attr.ino == b.attr.ino and a.attr.nlink == b.attr.nlink == 2


def _absent(fs: FuseClient, parent: int, name: bytes) -> None:
    """ENOENT, or (with a cache policy that keeps negative dentries) an entry with node 0."""
    try:
        entry = fs.lookup(parent, name)
    except OSError as e:
        assert e.errno == errno.ENOENT
    else:
        assert entry.nodeid == 0 and entry.entry_valid + entry.entry_valid_nsec > 0


def test_lookup_errors(fs: FuseClient) -> None:
    _absent(fs, fa.ROOT_ID, b"no-such-file")
    _absent(fs, fs.lookup(fa.ROOT_ID, b"sub").nodeid, b"file")
    assert _errno(fs.lookup, fa.ROOT_ID, b"x" * 300) == errno.ENAMETOOLONG
    hello = fs.lookup(fa.ROOT_ID, b"hello.txt").nodeid
    assert _errno(fs.lookup, hello, b"x") == errno.ENOTDIR
    assert _errno(fs.getattr, 987654321) in (errno.ENOENT, errno.ESTALE, errno.EINVAL)


def test_readlink(fs: FuseClient) -> None:
    assert fs.readlink(fs.lookup(fa.ROOT_ID, b"sym").nodeid) == b"hello.txt"
    assert fs.readlink(fs.lookup(fa.ROOT_ID, b"dangling").nodeid) == b"/nowhere/at/all"
    hello = fs.lookup(fa.ROOT_ID, b"hello.txt").nodeid
    assert _errno(fs.readlink, hello) == errno.EINVAL


def test_read_whole_files(fs: FuseClient, source: Path) -> None:
    for name in ("hello.txt", "big.bin", "sparse.bin", "empty"):
        want = (source / name).read_bytes()
        node = fs.lookup(fa.ROOT_ID, name.encode()).nodeid
        fh = fs.open(node).fh
        step = 128 << 10
        got = b"".join(fs.read(node, fh, o, step) for o in range(0, len(want) + step, step))
        assert got == want, name
        fs.flush_fh(node, fh)
        fs.release(node, fh)


def test_reads_at_and_past_eof_and_across_chunks(fs: FuseClient, source: Path) -> None:
    want = (source / "big.bin").read_bytes()
    node = fs.lookup(fa.ROOT_ID, b"big.bin").nodeid
    fh = fs.open(node).fh
    assert fs.read(node, fh, BIG_SIZE, 4096) == b""  # at EOF
    assert fs.read(node, fh, BIG_SIZE + 10**9, 4096) == b""  # far past EOF
    assert fs.read(node, fh, BIG_SIZE - 5, 4096) == want[-5:]  # short read at the end
    for k in (1, 2, 7, 16):  # straddling chunk boundaries, odd sizes
        off = k * CHUNK - 777
        assert fs.read(node, fh, off, 3 * CHUNK + 5) == want[off : off + 3 * CHUNK + 5]
    uniques = [
        fs.submit(fa.Op.READ, node, fa.read_in(fh, o, 4096), 4096) for o in range(0, BIG_SIZE, 5003)
    ]
    replies = fs.wait(uniques)
    offs = range(0, BIG_SIZE, 5003)
    assert [bytes(r.payload()) for r in replies] == [want[o : o + 4096] for o in offs]
    fs.release(node, fh)


def test_lseek_data_and_hole(fs: FuseClient) -> None:
    node = fs.lookup(fa.ROOT_ID, b"sparse.bin").nodeid
    fh = fs.open(node).fh
    # Holes are whole zero chunks: data lives in chunk 4 and the last chunk.
    assert fs.lseek(node, fh, 0, os.SEEK_DATA) == 4 * CHUNK
    assert fs.lseek(node, fh, 4 * CHUNK + 10, os.SEEK_DATA) == 4 * CHUNK + 10
    assert fs.lseek(node, fh, 4 * CHUNK, os.SEEK_HOLE) == 5 * CHUNK
    assert fs.lseek(node, fh, 5 * CHUNK, os.SEEK_DATA) == SPARSE_SIZE - CHUNK
    assert fs.lseek(node, fh, SPARSE_SIZE - 1, os.SEEK_HOLE) == SPARSE_SIZE
    assert _errno(fs.lseek, node, fh, SPARSE_SIZE, os.SEEK_DATA) == errno.ENXIO
    big = fs.lookup(fa.ROOT_ID, b"big.bin").nodeid
    bfh = fs.open(big).fh
    assert fs.lseek(big, bfh, 0, os.SEEK_HOLE) == BIG_SIZE
    assert fs.lseek(big, bfh, 100, os.SEEK_DATA) == 100


def test_open_errors(fs: FuseClient) -> None:
    hello = fs.lookup(fa.ROOT_ID, b"hello.txt").nodeid
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        assert _errno(fs.open, hello, flags) == errno.EROFS
    bigdir = fs.lookup(fa.ROOT_ID, b"bigdir").nodeid
    assert _errno(fs.open, bigdir) == errno.EISDIR
    assert _errno(fs.opendir, hello) == errno.ENOTDIR


def test_readdir_lists_every_name_and_resumes(fs: FuseClient, source: Path) -> None:
    node = fs.lookup(fa.ROOT_ID, b"bigdir").nodeid
    want = {os.fsencode(n) for n in os.listdir(source / "bigdir")} | {b".", b".."}
    assert len(want) == BIGDIR_ENTRIES + 2
    for plus in (False, True):
        got = fs.listdir(node, plus=plus, size=4096)  # many pages, resumed at the offsets
        names = [d.name for d in got]
        assert len(names) == len(set(names)) and set(names) == want
    # Resuming from any entry's offset gives exactly the entries after it.
    fh = fs.opendir(node).fh
    first = fs.readdir(node, fh, 0, 8192)
    mid = len(first) // 2
    rest = [d.name for d in first[mid + 1 :]]
    again = fs.readdir(node, fh, first[mid].off, 8192)
    assert [d.name for d in again[: len(rest)]] == rest
    fs.releasedir(node, fh)


def test_readdirplus_entries_match_lstat(fs: FuseClient, source: Path) -> None:
    entries = {d.name: d for d in fs.listdir(fa.ROOT_ID, plus=True, size=2048)}
    for e in os.scandir(source):
        d = entries[os.fsencode(e.name)]
        st = e.stat(follow_symlinks=False)
        assert d.type == stat.S_IFMT(st.st_mode) >> 12
        assert d.entry is not None and d.entry.nodeid
        _same_attr(d.entry.attr, st)


def test_statfs(fs: FuseClient) -> None:
    s = fs.statfs()
    assert s.bsize > 0 and s.namelen >= 255


def test_xattrs(fs: FuseClient) -> None:
    node = fs.lookup(fa.ROOT_ID, b"hello.txt").nodeid
    assert sorted(fs.listxattr(node)) == [b"user.big", b"user.greeting"]
    assert fs.listxattr_size(node) == len(b"user.big\0user.greeting\0")
    assert fs.getxattr(node, b"user.greeting") == b"hi there"
    assert fs.getxattr(node, b"user.big") == BIG_XATTR
    assert fs.getxattr_size(node, b"user.big") == len(BIG_XATTR)
    assert _errno(fs.getxattr, node, b"user.absent", 64) == errno.ENODATA
    assert _errno(fs.getxattr, node, b"user.big", 100) == errno.ERANGE
    assert _errno(fs.listxattr, node, 5) == errno.ERANGE
    empty = fs.lookup(fa.ROOT_ID, b"empty").nodeid
    assert fs.listxattr_size(empty) == 0


def test_access(fs: FuseClient) -> None:
    node = fs.lookup(fa.ROOT_ID, b"hello.txt").nodeid
    fs.access(node, os.R_OK)
    fs.access(node, os.F_OK)
    assert _errno(fs.access, node, os.W_OK) == errno.EROFS


def test_fsync_fsyncdir_syncfs_are_no_ops(fs: FuseClient) -> None:
    node = fs.lookup(fa.ROOT_ID, b"hello.txt").nodeid
    fh = fs.open(node).fh
    fs.call(fa.Op.FSYNC, node, struct.pack("<QII", fh, 0, 0), 16)
    dfh = fs.opendir(fa.ROOT_ID).fh
    fs.call(fa.Op.FSYNCDIR, fa.ROOT_ID, struct.pack("<QII", dfh, 0, 0), 16)
    fs.call(fa.Op.SYNCFS, fa.ROOT_ID, struct.pack("<Q", 0), 16)
    fs.release(node, fh)
    fs.releasedir(fa.ROOT_ID, dfh)


_NAME = b"newname\0"
_WRITE_OPS: dict[int, bytes] = {
    fa.Op.SETATTR: fa.setattr_in(mode=0o600),
    fa.Op.SYMLINK: b"new\0target\0",
    fa.Op.MKNOD: struct.pack("<IIII", 0o100644, 0, 0o22, 0) + _NAME,
    fa.Op.MKDIR: fa.mkdir_in(b"newdir"),
    fa.Op.UNLINK: b"hello.txt\0",
    fa.Op.RMDIR: b"sub\0",
    fa.Op.RENAME: struct.pack("<Q", fa.ROOT_ID) + b"hello.txt\0x\0",
    fa.Op.LINK: struct.pack("<Q", 2) + _NAME,
    fa.Op.SETXATTR: struct.pack("<II", 2, 0) + b"user.n\0ab",  # without SETXATTR_EXT
    fa.Op.REMOVEXATTR: b"user.greeting\0",
    fa.Op.CREATE: fa.create_in(b"newfile", os.O_WRONLY | os.O_CREAT),
    fa.Op.FALLOCATE: struct.pack("<QQQII", 0, 0, 4096, 0, 0),
    fa.Op.RENAME2: struct.pack("<QII", fa.ROOT_ID, 0, 0) + b"hello.txt\0x\0",
    fa.Op.COPY_FILE_RANGE: struct.pack("<QQQQQQQ", 0, 0, 2, 0, 0, 100, 0),
    fa.Op.TMPFILE: fa.create_in(b"", os.O_RDWR),
}


@pytest.mark.parametrize("op", sorted(_WRITE_OPS), ids=lambda o: fa.Op(o).name)
def test_every_write_op_is_erofs(fs: FuseClient, op: int) -> None:
    hello = fs.lookup(fa.ROOT_ID, b"hello.txt").nodeid
    target = hello if op in (fa.Op.SETATTR, fa.Op.SETXATTR, fa.Op.REMOVEXATTR) else fa.ROOT_ID
    if op in (fa.Op.FALLOCATE, fa.Op.COPY_FILE_RANGE):
        target = hello
    assert _errno(fs.call, op, target, _WRITE_OPS[op], 256) == errno.EROFS


def test_write_is_erofs(fs: FuseClient) -> None:
    node = fs.lookup(fa.ROOT_ID, b"hello.txt").nodeid
    fh = fs.open(node).fh
    assert _errno(fs.write, node, fh, 0, b"zz") == errno.EROFS


@pytest.mark.parametrize("op", [3000, 48, 49, 19, 0])
def test_unknown_opcodes_are_enosys(fs: FuseClient, op: int) -> None:
    assert _errno(fs.call, op, fa.ROOT_ID, b"\0" * 16, 64) == errno.ENOSYS
    assert fs.getattr(fa.ROOT_ID).attr.mode & stat.S_IFDIR


def test_forget_and_batch_forget_on_hiprio(fs: FuseClient) -> None:
    e = fs.lookup(fa.ROOT_ID, b"hello.txt")
    fs.lookup(fa.ROOT_ID, b"hello.txt")
    fs.forget(e.nodeid, 1)
    fs.batch_forget([(e.nodeid, 1), (123456789, 5)])  # an unknown node is ignored
    assert fs.lookup(fa.ROOT_ID, b"hello.txt").attr.size == e.attr.size


def test_second_init_resets_the_session(fs: FuseClient) -> None:
    node = fs.lookup(fa.ROOT_ID, b"hello.txt").nodeid
    fh = fs.open(node).fh
    again = fs.init()
    assert (again.major, again.minor) == (7, 38)
    # The new session works; the old handle is gone or still harmless, never a crash.
    assert fs.lookup(fa.ROOT_ID, b"hello.txt").attr.size > 0
    try:
        fs.read(node, fh, 0, 16)
    except OSError as e:
        assert e.errno in (errno.EBADF, errno.ENOENT, errno.ESTALE, errno.EINVAL)


def test_requests_before_init_are_refused(fs: FuseClient) -> None:
    fresh = FuseClient(fs.fe)
    fresh.call(fa.Op.DESTROY, 0, b"", 16)
    assert _errno(fresh.getattr, fa.ROOT_ID) in (errno.EIO, errno.EPROTO, errno.ENOSYS)
    fresh.init()
    assert fresh.getattr(fa.ROOT_ID).attr.mode & stat.S_IFDIR


def test_destroy_then_init(fs: FuseClient) -> None:
    fs.call(fa.Op.DESTROY, 0, b"", 16)
    fs.init()
    assert fs.lookup(fa.ROOT_ID, b"hello.txt").attr.size > 0
