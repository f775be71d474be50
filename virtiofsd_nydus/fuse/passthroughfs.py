"""The passthrough file system: a host directory served read-write (or read-only).

Kata's ``virtio-fs-nydus`` mode mounts the sandbox's shared directory at /containers and
the guest writes container state there, so this one must mutate.

Like virtiofsd: every node the guest holds is an ``O_PATH`` descriptor, keyed by
(st_dev, st_ino) so hard links share a node; names are resolved one component at a time
with ``*at`` calls relative to the parent's descriptor and ``O_NOFOLLOW``, so neither a
name nor a symlink in the shared directory can lead outside it. Operations that need a
real descriptor reopen the node through ``/proc/self/fd/N``, which names the inode
itself, never a path. A node's descriptor closes when the guest forgets its last lookup.

New files are created as the daemon's user and then given to the caller's uid/gid when
the daemon runs as root (no per-thread credential switching in Python).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from . import abi
from .filesystem import (
    Attr,
    CachePolicy,
    Context,
    DirEntry,
    Entry,
    FileSystem,
    SetAttr,
    StatFs,
    Timeouts,
    check_access,
    decode_rdev,
    encode_rdev,
    fs_error,
)

_U64 = (1 << 64) - 1
_DT_DIR = stat.S_IFDIR >> 12
# O_DIRECT: the guest's choice to skip *its* page cache says nothing about the host's
# (and would make our unaligned buffers fail), as virtiofsd decides.
_OPEN_STRIP = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT


def attr_of_stat(st: os.stat_result) -> Attr:
    return Attr(
        st.st_ino,
        st.st_size,
        st.st_blocks,
        st.st_atime_ns // 1_000_000_000 & _U64,
        st.st_mtime_ns // 1_000_000_000 & _U64,
        st.st_ctime_ns // 1_000_000_000 & _U64,
        st.st_atime_ns % 1_000_000_000,
        st.st_mtime_ns % 1_000_000_000,
        st.st_ctime_ns % 1_000_000_000,
        st.st_mode,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        encode_rdev(st.st_rdev),
        st.st_blksize,
        0,
    )


def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


@dataclass(eq=False)
class _Fd:
    """A descriptor the guest can name. ``busy`` pins it: a FORGET or RELEASE racing an
    operation on another worker only marks it ``dead``; the last user closes it, so a
    descriptor number is never reused under a running operation."""

    fd: int
    busy: int = 0
    dead: bool = False


@dataclass(eq=False)
class _Node(_Fd):
    key: tuple[int, int] = (0, 0)  # (st_dev, st_ino)
    mode: int = 0  # file type bits, fixed for the inode's life
    refs: int = 0  # the guest's lookup count


@dataclass(eq=False)
class _Dir(_Fd):
    entries: list[DirEntry] = field(default_factory=list)


_T = TypeVar("_T", bound=_Fd)


# The *at calls Python's os module cannot make: on an O_PATH descriptor itself
# (AT_EMPTY_PATH), which works for symlinks too without following them.
_libc = ctypes.CDLL(None, use_errno=True)
_AT_EMPTY_PATH = 0x1000
_AT_SYMLINK_NOFOLLOW = 0x100
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _check(rc: int) -> None:
    if rc != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _fchown(fd: int, uid: int, gid: int) -> None:
    _check(_libc.fchownat(fd, b"", uid, gid, _AT_EMPTY_PATH | _AT_SYMLINK_NOFOLLOW))


def _futimens(fd: int, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    _check(_libc.utimensat(fd, b"", times, _AT_EMPTY_PATH))


def _link(fd: int, newdirfd: int, newname: bytes) -> None:
    _check(_libc.linkat(fd, b"", newdirfd, newname, _AT_EMPTY_PATH))


def _renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> None:
    if flags == 0:
        os.rename(old, new, src_dir_fd=olddirfd, dst_dir_fd=newdirfd)
        return
    _check(_libc.renameat2(olddirfd, old, newdirfd, new, ctypes.c_uint(flags)))


def _time(valid: int, set_bit: int, now_bit: int, ns: int) -> tuple[int, int]:
    if valid & now_bit:
        return 0, _UTIME_NOW
    if valid & set_bit:
        return ns // 1_000_000_000, ns % 1_000_000_000
    return 0, _UTIME_OMIT


class PassthroughFS(FileSystem):
    """Serves the directory ``root``. Thread-safe: tables are locked, descriptors pinned."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        policy: CachePolicy = CachePolicy.AUTO,
        readonly: bool = False,
        xattr: bool = True,
    ) -> None:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        self._root = _Node(fd, key=(st.st_dev, st.st_ino), mode=stat.S_IFDIR, refs=1)
        self.policy = policy
        self.readonly = readonly
        self.xattr = xattr
        self._timeouts = policy.timeouts
        self._open_flags = (
            abi.FOPEN_KEEP_CACHE
            if policy.keep_cache
            else abi.FOPEN_DIRECT_IO
            if policy.direct_io
            else 0
        )
        self._as_root = os.geteuid() == 0
        self._lock = threading.Lock()
        self._nodes: dict[int, _Node] = {abi.ROOT_ID: self._root}
        self._by_key: dict[tuple[int, int], int] = {self._root.key: abi.ROOT_ID}
        self._files: dict[int, _Fd] = {}
        self._dirs: dict[int, _Dir] = {}
        self._next_node = abi.ROOT_ID + 1
        self._next_fh = 1

    # --- session -------------------------------------------------------------------------
    def _reset(self) -> None:
        with self._lock:
            gone: list[_Fd] = [n for n in self._nodes.values() if n is not self._root]
            gone += [*self._files.values(), *self._dirs.values()]
            self._nodes = {abi.ROOT_ID: self._root}
            self._by_key = {self._root.key: abi.ROOT_ID}
            self._files = {}
            self._dirs = {}
            to_close = [o.fd for o in gone if self._retire(o)]
        for fd in to_close:
            os.close(fd)

    def init(self, capable: int) -> int:
        self._reset()
        return 0

    def destroy(self) -> None:
        self._reset()

    def close(self) -> None:
        self._reset()
        os.close(self._root.fd)

    @property
    def node_count(self) -> int:
        """Nodes the guest holds (the root included): open O_PATH descriptors."""
        return len(self._nodes)

    # --- pinning ---------------------------------------------------------------------------
    @contextmanager
    def _hold(self, table: dict[int, _T], key: int, err: int) -> Iterator[_T]:
        with self._lock:
            obj = table.get(key)
            if obj is None:
                raise fs_error(err)
            obj.busy += 1
        try:
            yield obj
        finally:
            with self._lock:
                obj.busy -= 1
                close = obj.dead and obj.busy == 0
            if close:
                os.close(obj.fd)

    @staticmethod
    def _retire(obj: _Fd) -> bool:
        """Under the lock: mark dead; True if the caller should close it now."""
        obj.dead = True
        return obj.busy == 0

    def _node(self, ino: int) -> AbstractContextManager[_Node]:
        return self._hold(self._nodes, ino, errno.ESTALE)

    def _file(self, fh: int) -> AbstractContextManager[_Fd]:
        return self._hold(self._files, fh, errno.EBADF)

    def _dir(self, fh: int) -> AbstractContextManager[_Dir]:
        return self._hold(self._dirs, fh, errno.EBADF)

    def _new_fh(self, table: dict[int, _T], obj: _T) -> int:
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            table[fh] = obj
        return fh

    def _drop_fh(self, table: dict[int, _T], fh: int) -> None:
        with self._lock:
            obj = table.pop(fh, None)
            close = obj is not None and self._retire(obj)
        if close:
            assert obj is not None
            os.close(obj.fd)

    def _writable(self) -> None:
        if self.readonly:
            raise fs_error(errno.EROFS)

    def _entry(self, parent: int, name: bytes) -> Entry:
        """Resolve ``name`` in ``parent`` and count one lookup of its node."""
        with self._node(parent) as p:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=p.fd)
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        key = (st.st_dev, st.st_ino)
        with self._lock:
            ino = self._by_key.get(key)
            if ino is not None:
                self._nodes[ino].refs += 1
            else:
                ino = self._next_node
                self._next_node += 1
                self._nodes[ino] = _Node(fd, key=key, mode=stat.S_IFMT(st.st_mode), refs=1)
                self._by_key[key] = ino
                fd = -1
        if fd >= 0:
            os.close(fd)  # we already held this inode
        return Entry(ino, attr_of_stat(st), self._timeouts)

    def _chown_new(self, ctx: Context, parent_fd: int, name: bytes) -> None:
        if self._as_root:
            os.chown(name, ctx.uid, ctx.gid, dir_fd=parent_fd, follow_symlinks=False)

    # --- names and attributes -----------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> Entry:
        return self._entry(parent, name)

    def forget(self, ino: int, nlookup: int) -> None:
        if ino == abi.ROOT_ID:
            return
        with self._lock:
            node = self._nodes.get(ino)
            if node is None:
                return
            node.refs -= nlookup
            if node.refs > 0:
                return
            del self._nodes[ino]
            del self._by_key[node.key]
            close = self._retire(node)
        if close:
            os.close(node.fd)

    def getattr(self, ino: int, fh: int | None) -> tuple[Attr, Timeouts]:
        with self._node(ino) as node:
            return attr_of_stat(os.fstat(node.fd)), self._timeouts

    def setattr(
        self, ino: int, valid: int, values: SetAttr, fh: int | None
    ) -> tuple[Attr, Timeouts]:
        self._writable()
        with self._node(ino) as node:
            if valid & abi.FATTR_MODE:
                if node.mode == stat.S_IFLNK:
                    raise fs_error(errno.EOPNOTSUPP)  # Linux has no lchmod
                os.chmod(_proc(node.fd), stat.S_IMODE(values.mode))
            if valid & (abi.FATTR_UID | abi.FATTR_GID):
                uid = values.uid if valid & abi.FATTR_UID else -1
                gid = values.gid if valid & abi.FATTR_GID else -1
                _fchown(node.fd, uid, gid)
            if valid & abi.FATTR_SIZE:
                if node.mode != stat.S_IFREG:
                    raise fs_error(errno.EISDIR if node.mode == stat.S_IFDIR else errno.EINVAL)
                if fh is not None and fh in self._files:
                    with self._file(fh) as f:
                        os.ftruncate(f.fd, values.size)
                else:
                    os.truncate(_proc(node.fd), values.size)
            times = abi.FATTR_ATIME | abi.FATTR_MTIME | abi.FATTR_ATIME_NOW | abi.FATTR_MTIME_NOW
            if valid & times:
                _futimens(
                    node.fd,
                    _time(valid, abi.FATTR_ATIME, abi.FATTR_ATIME_NOW, values.atime_ns),
                    _time(valid, abi.FATTR_MTIME, abi.FATTR_MTIME_NOW, values.mtime_ns),
                )
            return attr_of_stat(os.fstat(node.fd)), self._timeouts

    def readlink(self, ino: int) -> bytes:
        with self._node(ino) as node:
            if node.mode != stat.S_IFLNK:
                raise fs_error(errno.EINVAL)
            return os.readlink(b"", dir_fd=node.fd)

    def access(self, ino: int, mask: int, uid: int, gid: int) -> None:
        with self._node(ino) as node:
            st = os.fstat(node.fd)
        if mask & os.W_OK and self.readonly:
            raise fs_error(errno.EROFS)
        check_access(st.st_mode, st.st_uid, st.st_gid, mask, uid, gid)

    def statfs(self, ino: int) -> StatFs:
        with self._node(ino) as node:
            v = os.statvfs(node.fd)
        return StatFs(
            v.f_blocks,
            v.f_bfree,
            v.f_bavail,
            v.f_files,
            v.f_ffree,
            v.f_bsize,
            v.f_namemax,
            v.f_frsize,
        )

    # --- xattrs: through /proc for files and directories; symlinks have none for us --------
    @contextmanager
    def _xattr_path(self, ino: int) -> Iterator[str]:
        if not self.xattr:
            raise fs_error(errno.ENOTSUP)
        with self._node(ino) as node:
            if node.mode not in (stat.S_IFREG, stat.S_IFDIR):
                raise fs_error(errno.ENOTSUP)
            yield _proc(node.fd)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        with self._xattr_path(ino) as path:
            return os.getxattr(path, name)

    def listxattr(self, ino: int) -> list[bytes]:
        with self._xattr_path(ino) as path:
            return [n.encode("utf-8", "surrogateescape") for n in os.listxattr(path)]

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int) -> None:
        self._writable()
        with self._xattr_path(ino) as path:
            os.setxattr(path, name, value, flags)

    def removexattr(self, ino: int, name: bytes) -> None:
        self._writable()
        with self._xattr_path(ino) as path:
            os.removexattr(path, name)

    # --- files ---------------------------------------------------------------------------------
    def open(self, ino: int, flags: int) -> tuple[int, int]:
        with self._node(ino) as node:
            if node.mode == stat.S_IFDIR:
                raise fs_error(errno.EISDIR)
            if node.mode == stat.S_IFLNK:
                raise fs_error(errno.ELOOP)  # reopening it through /proc would follow it
            if node.mode != stat.S_IFREG:
                # The guest opens device nodes, FIFOs and sockets itself, never through
                # us: only a hostile guest asks, to reach a host device or block on a FIFO.
                raise fs_error(errno.EACCES)
            if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
                self._writable()
            # No O_NOFOLLOW here: /proc/self/fd/N is itself a (magic) link to the inode.
            fd = os.open(_proc(node.fd), (flags & ~_OPEN_STRIP) | os.O_CLOEXEC)
        return self._new_fh(self._files, _Fd(fd)), self._open_flags

    def read(self, ino: int, fh: int, offset: int, size: int) -> bytes:
        with self._file(fh) as f:
            return os.pread(f.fd, size, offset)

    def write(self, ino: int, fh: int, offset: int, data: memoryview, flags: int) -> int:
        self._writable()
        with self._file(fh) as f:
            return os.pwrite(f.fd, data, offset)

    def lseek(self, ino: int, fh: int, offset: int, whence: int) -> int:
        with self._file(fh) as f:
            return os.lseek(f.fd, offset, whence)

    def fsync(self, ino: int, fh: int, datasync: bool) -> None:
        with self._file(fh) as f:
            if datasync:
                os.fdatasync(f.fd)
            else:
                os.fsync(f.fd)

    def fallocate(self, ino: int, fh: int, offset: int, length: int, mode: int) -> None:
        self._writable()
        if mode:
            raise fs_error(errno.EOPNOTSUPP)  # punch-hole / zero-range not passed through
        with self._file(fh) as f:
            os.posix_fallocate(f.fd, offset, length)

    def copy_file_range(
        self,
        ino_in: int,
        fh_in: int,
        off_in: int,
        ino_out: int,
        fh_out: int,
        off_out: int,
        length: int,
        flags: int,
    ) -> int:
        self._writable()
        with self._file(fh_in) as fin, self._file(fh_out) as fout:
            return os.copy_file_range(fin.fd, fout.fd, length, off_in, off_out)

    def release(self, ino: int, fh: int, flags: int) -> None:
        self._drop_fh(self._files, fh)

    # --- directories ----------------------------------------------------------------------------
    def opendir(self, ino: int, flags: int) -> tuple[int, int]:
        with self._node(ino) as node:
            if node.mode != stat.S_IFDIR:
                raise fs_error(errno.ENOTDIR)
            fd = os.open(_proc(node.fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fh = self._new_fh(self._dirs, _Dir(fd))
        return fh, abi.FOPEN_CACHE_DIR | abi.FOPEN_KEEP_CACHE if self.policy.keep_cache else 0

    def readdir(self, ino: int, fh: int, offset: int) -> Iterator[DirEntry]:
        """A snapshot taken when the guest reads from offset 0 (opendir or rewinddir);
        cookies are positions in it, so a listing resumes correctly while names change."""
        with self._dir(fh) as d:
            if offset == 0 or not d.entries:
                d.entries = self._snapshot(d.fd)
            return iter(d.entries[offset:])

    def _snapshot(self, fd: int) -> list[DirEntry]:
        me = os.fstat(fd).st_ino
        up = os.stat(b"..", dir_fd=fd).st_ino
        out = [DirEntry(me, 1, _DT_DIR, b"."), DirEntry(up, 2, _DT_DIR, b"..")]
        with os.scandir(fd) as it:
            for e in it:
                try:
                    dtype = stat.S_IFMT(e.stat(follow_symlinks=False).st_mode) >> 12
                except FileNotFoundError:
                    continue  # removed while we listed
                out.append(DirEntry(e.inode(), len(out) + 1, dtype, os.fsencode(e.name)))
        return out

    def releasedir(self, ino: int, fh: int) -> None:
        self._drop_fh(self._dirs, fh)

    def fsyncdir(self, ino: int, fh: int, datasync: bool) -> None:
        with self._dir(fh) as d:
            os.fsync(d.fd)

    # --- namespace mutations ----------------------------------------------------------------------
    def mknod(
        self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int, umask: int
    ) -> Entry:
        self._writable()
        with self._node(parent) as p:
            os.mknod(name, mode, decode_rdev(rdev), dir_fd=p.fd)
            self._chown_new(ctx, p.fd, name)
        return self._entry(parent, name)

    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int, umask: int) -> Entry:
        self._writable()
        with self._node(parent) as p:
            os.mkdir(name, mode, dir_fd=p.fd)
            self._chown_new(ctx, p.fd, name)
        return self._entry(parent, name)

    def symlink(self, ctx: Context, parent: int, name: bytes, target: bytes) -> Entry:
        self._writable()
        with self._node(parent) as p:
            os.symlink(target, name, dir_fd=p.fd)
            self._chown_new(ctx, p.fd, name)
        return self._entry(parent, name)

    def link(self, ino: int, newparent: int, newname: bytes) -> Entry:
        self._writable()
        with self._node(ino) as node, self._node(newparent) as p:
            if node.mode == stat.S_IFDIR:
                raise fs_error(errno.EPERM)
            _link(node.fd, p.fd, newname)
        return self._entry(newparent, newname)

    def unlink(self, parent: int, name: bytes) -> None:
        self._writable()
        with self._node(parent) as p:
            os.unlink(name, dir_fd=p.fd)

    def rmdir(self, parent: int, name: bytes) -> None:
        self._writable()
        with self._node(parent) as p:
            os.rmdir(name, dir_fd=p.fd)

    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes, flags: int) -> None:
        self._writable()
        with self._node(parent) as p, self._node(newparent) as q:
            _renameat2(p.fd, name, q.fd, newname, flags)

    def create(
        self, ctx: Context, parent: int, name: bytes, flags: int, mode: int, umask: int
    ) -> tuple[Entry, int, int]:
        self._writable()
        with self._node(parent) as p:
            # O_NONBLOCK: the name may already be a FIFO (no effect on a regular file).
            fd = os.open(
                name,
                (flags & ~(os.O_NOCTTY | os.O_DIRECT))
                | os.O_CREAT
                | os.O_CLOEXEC
                | os.O_NOFOLLOW
                | os.O_NONBLOCK,
                mode,
                dir_fd=p.fd,
            )
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise fs_error(errno.EACCES)  # an existing device node, FIFO or socket
                self._chown_new(ctx, p.fd, name)
            except BaseException:
                os.close(fd)
                raise
        try:
            entry = self._entry(parent, name)
        except BaseException:
            os.close(fd)
            raise
        return entry, self._new_fh(self._files, _Fd(fd)), self._open_flags

    def tmpfile(
        self, ctx: Context, parent: int, flags: int, mode: int, umask: int
    ) -> tuple[Entry, int, int]:
        raise fs_error(errno.EROFS if self.readonly else errno.EOPNOTSUPP)
