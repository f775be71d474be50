"""The passthrough file system over a temporary host directory, driven through the Server."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtiofsd_nydus.fuse import abi
from virtiofsd_nydus.fuse.abi import Opcode
from virtiofsd_nydus.fuse.passthroughfs import PassthroughFS

from .session import Session
from .wire import ENTRY_NODEID, attr_of_entry, cstr, dirents, entry_out, read_in, request

ROOT = os.geteuid() == 0


class PtSession(Session):
    fs: PassthroughFS

    def entry(self, r_payload: bytes) -> int:
        return int(entry_out(r_payload)[ENTRY_NODEID])

    def create(
        self, parent: int, name: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0
    ) -> tuple[int, int]:
        body = abi.CREATE_IN.pack(os.O_CREAT | os.O_RDWR, stat.S_IFREG | mode, 0o22, 0) + cstr(name)
        r = self.call(Opcode.CREATE, body, nodeid=parent, uid=uid, gid=gid)
        assert r.error == 0, r.error
        ino = self.entry(r.payload[: abi.ENTRY_OUT.size])
        fh = abi.OPEN_OUT.unpack(r.payload[abi.ENTRY_OUT.size :])[0]
        return ino, fh

    def write(self, ino: int, fh: int, offset: int, data: bytes) -> int:
        r = self.call(
            Opcode.WRITE, abi.WRITE_IN.pack(fh, offset, len(data), 0, 0, 0, 0) + data, nodeid=ino
        )
        assert r.error == 0, r.error
        return int(abi.WRITE_OUT.unpack(r.payload)[0])

    def setattr(
        self,
        ino: int,
        valid: int,
        *,
        size: int = 0,
        mode: int = 0,
        uid: int = 0,
        gid: int = 0,
        atime: int = 0,
        mtime: int = 0,
        fh: int = 0,
    ) -> int:
        body = abi.SETATTR_IN.pack(
            valid, 0, fh, size, 0, atime, mtime, 0, 7, 9, 0, mode, 0, uid, gid, 0
        )
        return self.call(Opcode.SETATTR, body, nodeid=ino).error


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    d = tmp_path / "shared"
    d.mkdir()
    (d / "hello").write_bytes(b"hello world\n")
    (d / "sub").mkdir()
    (d / "sub" / "inner").write_bytes(b"inner")
    (tmp_path / "outside").write_bytes(b"do not touch")
    os.symlink("../outside", d / "escape")
    os.symlink("/", d / "rootlink")
    return d


@pytest.fixture
def s(shared: Path) -> Iterator[PtSession]:
    fs = PassthroughFS(shared)
    yield PtSession(fs)
    fs.close()


def test_lookup_getattr_read(s: PtSession, shared: Path) -> None:
    ino = s.lookup(b"hello")
    a = s.getattr(ino)
    st = os.stat(shared / "hello")
    assert (a["ino"], a["size"], a["mode"], a["mtime"], a["mtimensec"]) == (
        st.st_ino,
        12,
        st.st_mode,
        st.st_mtime_ns // 10**9,
        st.st_mtime_ns % 10**9,
    )
    fh = s.open(ino)
    assert s.read(ino, 6, 100, fh).payload == b"world\n"
    assert s.call(Opcode.RELEASE, abi.RELEASE_IN.pack(fh, 0, 0, 0), nodeid=ino).error == 0
    assert s.read(ino, 0, 10, fh).error == errno.EBADF  # released
    assert s.lookup(b"sub/inner") != ino


def test_hard_links_share_a_node_and_forget_closes(s: PtSession, shared: Path) -> None:
    os.link(shared / "hello", shared / "hello2")
    a, b = s.lookup(b"hello"), s.lookup(b"hello2")
    assert a == b
    before = s.fs.node_count
    s.srv.handle(request(Opcode.FORGET, abi.FORGET_IN.pack(1), nodeid=a), 0)
    assert s.fs.node_count == before  # one lookup left
    s.srv.handle(request(Opcode.FORGET, abi.FORGET_IN.pack(1), nodeid=a), 0)
    assert s.fs.node_count == before - 1
    assert s.call(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0), nodeid=a).error == errno.ESTALE


def test_symlinks_never_lead_outside(s: PtSession, shared: Path) -> None:
    esc = s.lookup(b"escape")
    assert stat.S_ISLNK(s.getattr(esc)["mode"])
    assert s.call(Opcode.READLINK, nodeid=esc).payload == b"../outside"
    # not a directory to resolve names in, not a file to open, no mode to change
    assert s.call(Opcode.LOOKUP, cstr(b"etc"), nodeid=s.lookup(b"rootlink")).error == errno.ENOTDIR
    assert s.call(Opcode.OPEN, abi.OPEN_IN.pack(os.O_RDONLY, 0), nodeid=esc).error == errno.ELOOP
    assert s.setattr(esc, abi.FATTR_MODE, mode=0o600) == errno.EOPNOTSUPP
    assert s.setattr(esc, abi.FATTR_SIZE, size=0) == errno.EINVAL
    assert (shared.parent / "outside").read_bytes() == b"do not touch"
    # names cannot climb either
    assert s.call(Opcode.LOOKUP, cstr(b"..")).error == errno.EINVAL
    assert s.call(Opcode.LOOKUP, cstr(b"../outside")).error == errno.EINVAL


@pytest.mark.skipif(not ROOT, reason="chown needs root")
def test_symlink_chown_changes_the_link_not_the_target(s: PtSession, shared: Path) -> None:
    esc = s.lookup(b"escape")
    assert s.setattr(esc, abi.FATTR_UID | abi.FATTR_GID, uid=4321, gid=4321) == 0
    assert os.lstat(shared / "escape").st_uid == 4321
    assert os.stat(shared.parent / "outside").st_uid == 0


def test_create_write_read_truncate(s: PtSession, shared: Path) -> None:
    ino, fh = s.create(1, b"new", 0o640, uid=1234, gid=5678)
    assert s.write(ino, fh, 0, b"abcdef") == 6
    assert s.write(ino, fh, 10, b"xyz") == 3
    assert (shared / "new").read_bytes() == b"abcdef\0\0\0\0xyz"
    st = os.stat(shared / "new")
    assert stat.S_IMODE(st.st_mode) == 0o640
    if ROOT:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert s.read(ino, 2, 3, fh).payload == b"cde"
    assert s.setattr(ino, abi.FATTR_SIZE | abi.FATTR_FH, size=4, fh=fh) == 0
    assert (shared / "new").read_bytes() == b"abcd"
    assert s.setattr(ino, abi.FATTR_SIZE, size=2) == 0  # no handle: through /proc
    assert (shared / "new").read_bytes() == b"ab"
    assert s.call(Opcode.FSYNC, abi.FSYNC_IN.pack(fh, 1, 0), nodeid=ino).error == 0
    assert s.call(Opcode.FLUSH, abi.FLUSH_IN.pack(fh, 0, 0, 0), nodeid=ino).error == 0
    body = abi.CREATE_IN.pack(os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o100644, 0, 0) + cstr(b"new")
    assert s.call(Opcode.CREATE, body).error == errno.EEXIST


def test_o_direct_is_not_passed_to_the_host(s: PtSession) -> None:
    ino = s.lookup(b"hello")
    fh = s.open(ino, os.O_RDONLY | os.O_DIRECT)
    assert s.read(ino, 1, 5, fh).payload == b"ello "  # unaligned: fine without O_DIRECT


def test_setattr_mode_times(s: PtSession, shared: Path) -> None:
    ino = s.lookup(b"hello")
    assert s.setattr(ino, abi.FATTR_MODE, mode=0o100600) == 0
    assert stat.S_IMODE(os.stat(shared / "hello").st_mode) == 0o600
    assert s.setattr(ino, abi.FATTR_MTIME, mtime=1_000_000) == 0
    st = os.stat(shared / "hello")
    assert st.st_mtime_ns == 1_000_000 * 10**9 + 9
    assert st.st_atime_ns != 1_000_000 * 10**9 + 7  # atime untouched (UTIME_OMIT)
    assert s.setattr(ino, abi.FATTR_ATIME | abi.FATTR_MTIME_NOW, atime=5) == 0
    st = os.stat(shared / "hello")
    assert st.st_atime_ns == 5 * 10**9 + 7 and st.st_mtime_ns > 10**18


def test_namespace_ops(s: PtSession, shared: Path) -> None:
    r = s.call(Opcode.MKDIR, abi.MKDIR_IN.pack(0o750, 0o22) + cstr(b"d"))
    d = s.entry(r.payload)
    assert stat.S_ISDIR(attr_of_entry(entry_out(r.payload))["mode"])
    r = s.call(Opcode.SYMLINK, cstr(b"l", b"target/x"), nodeid=d)
    assert os.readlink(shared / "d" / "l") == "target/x"
    r = s.call(
        Opcode.MKNOD, abi.MKNOD_IN.pack(stat.S_IFIFO | 0o600, 0, 0, 0) + cstr(b"fifo"), nodeid=d
    )
    assert r.error == 0 and stat.S_ISFIFO(os.lstat(shared / "d" / "fifo").st_mode)
    # opening it here would block the worker (or, for a device node, reach the host's)
    fifo = s.entry(r.payload)
    assert s.call(Opcode.OPEN, abi.OPEN_IN.pack(os.O_RDONLY, 0), nodeid=fifo).error == (
        errno.EACCES
    )
    body = abi.CREATE_IN.pack(os.O_CREAT | os.O_RDONLY, 0o100644, 0, 0) + cstr(b"fifo")
    assert s.call(Opcode.CREATE, body, nodeid=d).error == errno.EACCES
    hello = s.lookup(b"hello")
    r = s.call(Opcode.LINK, abi.LINK_IN.pack(hello) + cstr(b"hard"), nodeid=d)
    assert s.entry(r.payload) == hello
    assert os.stat(shared / "hello").st_nlink == 2
    assert (
        s.call(Opcode.RENAME, abi.RENAME_IN.pack(1) + cstr(b"hard", b"moved"), nodeid=d).error == 0
    )
    assert (shared / "moved").read_bytes() == b"hello world\n"
    noreplace = 1  # RENAME_NOREPLACE
    body = abi.RENAME2_IN.pack(1, noreplace, 0) + cstr(b"moved", b"hello")
    assert s.call(Opcode.RENAME2, body).error == errno.EEXIST
    assert s.call(Opcode.UNLINK, cstr(b"moved")).error == 0
    assert s.call(Opcode.RMDIR, cstr(b"d")).error == errno.ENOTEMPTY
    for name in (b"l", b"fifo"):
        assert s.call(Opcode.UNLINK, cstr(name), nodeid=d).error == 0
    assert s.call(Opcode.RMDIR, cstr(b"d")).error == 0
    assert not (shared / "d").exists()


def test_readdir_and_readdirplus(s: PtSession, shared: Path) -> None:
    for i in range(50):
        (shared / "sub" / f"f{i:02d}").write_bytes(b"x" * i)
    sub = s.lookup(b"sub")
    for op, plus in ((Opcode.READDIR, False), (Opcode.READDIRPLUS, True)):
        r = s.call(Opcode.OPENDIR, abi.OPEN_IN.pack(0, 0), nodeid=sub)
        fh = abi.OPEN_OUT.unpack(r.payload)[0]
        got, offset = [], 0
        while True:
            r = s.call(op, read_in(fh, offset, 512), nodeid=sub)
            batch = dirents(r.payload, plus)
            if not batch:
                break
            got += batch
            offset = batch[-1].off
        names = sorted(e.name for e in got)
        assert names == sorted([b".", b"..", b"inner"] + [b"f%02d" % i for i in range(50)])
        if plus:
            for e in got:
                if e.name not in (b".", b".."):
                    assert (
                        attr_of_entry(e.entry)["ino"]
                        == os.stat(shared / "sub" / e.name.decode()).st_ino
                    )
        assert s.call(Opcode.RELEASEDIR, abi.RELEASE_IN.pack(fh, 0, 0, 0), nodeid=sub).error == 0


def test_xattrs(s: PtSession, shared: Path) -> None:
    ino = s.lookup(b"hello")
    body = abi.SETXATTR_IN_COMPAT.pack(3, 0) + cstr(b"user.k") + b"val"
    assert s.call(Opcode.SETXATTR, body, nodeid=ino).error == 0
    assert os.getxattr(shared / "hello", "user.k") == b"val"
    get = abi.GETXATTR_IN.pack
    assert s.call(Opcode.GETXATTR, get(10, 0) + cstr(b"user.k"), nodeid=ino).payload == b"val"
    assert s.call(Opcode.GETXATTR, get(1, 0) + cstr(b"user.k"), nodeid=ino).error == errno.ERANGE
    assert b"user.k\0" in s.call(Opcode.LISTXATTR, get(1000, 0), nodeid=ino).payload
    assert s.call(Opcode.REMOVEXATTR, cstr(b"user.k"), nodeid=ino).error == 0
    assert s.call(Opcode.GETXATTR, get(10, 0) + cstr(b"user.k"), nodeid=ino).error == errno.ENODATA
    esc = s.lookup(b"escape")
    assert s.call(Opcode.GETXATTR, get(10, 0) + cstr(b"user.k"), nodeid=esc).error == errno.ENOTSUP


def test_lseek_fallocate_copy_file_range_statfs(s: PtSession, shared: Path) -> None:
    ino, fh = s.create(1, b"sparse")
    s.write(ino, fh, 1 << 20, b"data")
    assert s.lseek(ino, 0, abi.SEEK_DATA, fh) >= 0
    assert s.lseek(ino, 0, abi.SEEK_HOLE, fh) < (1 << 20) + 4
    assert s.call(Opcode.FALLOCATE, abi.FALLOCATE_IN.pack(fh, 0, 8192, 0, 0), nodeid=ino).error == 0
    out, ofh = s.create(1, b"copy")
    body = abi.COPY_FILE_RANGE_IN.pack(fh, 1 << 20, out, ofh, 0, 4, 0)
    r = s.call(Opcode.COPY_FILE_RANGE, body, nodeid=ino)
    assert abi.WRITE_OUT.unpack(r.payload)[0] == 4
    assert (shared / "copy").read_bytes() == b"data"
    st = abi.STATFS_OUT.unpack(s.call(Opcode.STATFS).payload)
    v = os.statvfs(shared)
    assert (st[5], st[6]) == (v.f_bsize, v.f_namemax)


def test_readonly_refuses_every_mutation(shared: Path) -> None:
    fs = PassthroughFS(shared, readonly=True)
    s = PtSession(fs)
    hello = s.lookup(b"hello")
    assert s.call(Opcode.OPEN, abi.OPEN_IN.pack(os.O_WRONLY, 0), nodeid=hello).error == errno.EROFS
    fh = s.open(hello)
    assert s.read(hello, 0, 5, fh).payload == b"hello"
    assert (
        s.call(Opcode.WRITE, abi.WRITE_IN.pack(fh, 0, 1, 0, 0, 0, 0) + b"x", nodeid=hello).error
        == errno.EROFS
    )
    assert s.call(Opcode.MKDIR, abi.MKDIR_IN.pack(0o755, 0) + cstr(b"d")).error == errno.EROFS
    assert s.call(Opcode.UNLINK, cstr(b"hello")).error == errno.EROFS
    assert s.setattr(hello, abi.FATTR_MODE, mode=0o600) == errno.EROFS
    assert (shared / "hello").read_bytes() == b"hello world\n"
    fs.close()


def test_new_init_closes_every_descriptor(shared: Path) -> None:
    fs = PassthroughFS(shared)
    s = PtSession(fs)
    s.lookup(b"sub/inner")
    ino, fh = s.create(1, b"f")
    s.call(Opcode.OPENDIR, abi.OPEN_IN.pack(0, 0))
    assert fs.node_count == 4
    PtSession(fs)  # a guest reboot: INIT on the same file system
    assert fs.node_count == 1
    assert s.read(ino, 0, 1, fh).error == errno.EBADF  # its handle is gone
    fs.close()


def test_a_forget_racing_an_operation_never_closes_its_descriptor(shared: Path) -> None:
    # Another worker's FORGET (or RELEASE) lands while an operation still uses the node:
    # the descriptor must stay open until that operation is done, or its number could be
    # reused by an unrelated open and the operation would act on the wrong file.
    fs = PassthroughFS(shared)
    s = PtSession(fs)
    ino = s.lookup(b"sub")
    with fs._node(ino) as node:
        fs.forget(ino, 1)
        assert fs.node_count == 1  # gone from the table at once...
        os.fstat(node.fd)  # ...but still open for the operation in flight
    with pytest.raises(OSError) as e:
        os.fstat(node.fd)
    assert e.value.errno == errno.EBADF
    ino, fh = s.create(1, b"f")
    with fs._file(fh) as f:
        fs.release(ino, fh, 0)
        os.fstat(f.fd)
    with pytest.raises(OSError):
        os.fstat(f.fd)
    fs.close()
