"""Several file systems at sub-paths of one export (nydusd's "vfs" + pseudo fs).

Kata's virtio-fs-nydus mode asks one daemon for a passthrough at ``/containers`` and an
image at ``/rafs/<cid>/lowerdir`` per container, mounted and unmounted while the guest
runs. The directories leading to mount points are synthetic, read-only "pseudo" dirs.

Node ids: the top 8 bits name the mount slot (0 = pseudo dirs), the low 56 bits are the
mounted file system's own node id, so translation is arithmetic and needs no table.
A slot freed by an unmount is reused last (and with a new generation), so a guest still
holding old node ids gets ESTALE rather than another image's files.
With FUSE_SUBMOUNTS the guest sees each mount as its own submount (own st_dev), so
inode numbers from different images never meet; attr.ino also carries the slot.
"""

from __future__ import annotations

import errno
import stat
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import LocalError
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
    fs_error,
)

SLOT_SHIFT = 56
INNER_MASK = (1 << SLOT_SHIFT) - 1
MAX_MOUNTS = 255
_DT_DIR = stat.S_IFDIR >> 12


@dataclass(eq=False)
class _Dir:
    ino: int
    parent: int
    children: dict[bytes, int] = field(default_factory=dict)  # name -> outer node id


@dataclass(eq=False)
class _Mount:
    slot: int
    generation: int
    path: str
    fs: FileSystem
    parent: int  # the pseudo dir holding the mount point
    name: bytes

    @property
    def root(self) -> int:
        return self.slot << SLOT_SHIFT | abi.ROOT_ID


def _split_path(path: str) -> list[bytes]:
    if not path.startswith("/"):
        raise LocalError(f"mount point {path!r} is not an absolute path")
    parts = [p.encode() for p in path.split("/") if p]
    if not parts:
        raise LocalError("cannot mount at / (serve that file system directly)")
    for p in parts:
        if p in (b".", b"..") or len(p) > abi.NAME_MAX or b"\0" in p:
            raise LocalError(f"mount point {path!r} has a bad component {p!r}")
    return parts


class PseudoFS(FileSystem):
    """A tree of pseudo directories with file systems mounted at some of its paths."""

    def __init__(self, *, timeouts: Timeouts = CachePolicy.AUTO.timeouts) -> None:
        # Mount points come and go: names in pseudo dirs are cached only briefly.
        self._timeouts = timeouts
        self._lock = threading.RLock()
        self._dirs: dict[int, _Dir] = {abi.ROOT_ID: _Dir(abi.ROOT_ID, abi.ROOT_ID)}
        self._next_dir = abi.ROOT_ID + 1
        self._mounts: dict[int, _Mount] = {}
        self._fresh = deque(range(1, MAX_MOUNTS + 1))
        self._freed: deque[int] = deque()
        self._generation = [0] * (MAX_MOUNTS + 1)
        self._capable: int | None = None  # the session's INIT flags while one is open
        self._submounts = False
        self._ctime = time.time_ns()

    # --- mount table (called by the daemon's API) ---------------------------------------
    def mount(self, path: str, fs: FileSystem) -> None:
        parts = _split_path(path)
        with self._lock:
            d = self._dirs[abi.ROOT_ID]
            for part in parts[:-1]:
                child = d.children.get(part)
                if child is None:
                    child = self._next_dir
                    self._next_dir += 1
                    self._dirs[child] = _Dir(child, d.ino)
                    d.children[part] = child
                elif child >> SLOT_SHIFT:
                    raise LocalError(f"cannot mount {path}: inside the mount at {part!r}")
                d = self._dirs[child]
            if parts[-1] in d.children:
                raise LocalError(f"cannot mount {path}: already exists")
            if self._fresh:
                slot = self._fresh.popleft()
            elif self._freed:
                slot = self._freed.popleft()
            else:
                raise LocalError(f"cannot mount {path}: {MAX_MOUNTS} mounts already")
            self._generation[slot] += 1
            m = _Mount(slot, self._generation[slot], path, fs, d.ino, parts[-1])
            if self._capable is not None:
                fs.init(self._capable)
            self._mounts[slot] = m
            d.children[parts[-1]] = m.root

    def umount(self, path: str) -> FileSystem:
        """Detach and return the file system mounted at ``path`` (LocalError if none)."""
        with self._lock:
            m = next((m for m in self._mounts.values() if m.path == path), None)
            if m is None:
                raise LocalError(f"nothing mounted at {path}")
            del self._dirs[m.parent].children[m.name]
            del self._mounts[m.slot]
            self._freed.append(m.slot)
        if self._capable is not None:
            m.fs.destroy()
        return m.fs

    def mounts(self) -> dict[str, FileSystem]:
        with self._lock:
            return {m.path: m.fs for m in self._mounts.values()}

    # --- translation -------------------------------------------------------------------------
    def _at(self, ino: int) -> tuple[_Mount | None, int]:
        slot = ino >> SLOT_SHIFT
        if slot == 0:
            return None, ino
        m = self._mounts.get(slot)
        if m is None:
            raise fs_error(errno.ESTALE)  # unmounted since the guest learned this id
        return m, ino & INNER_MASK

    def _attr(self, m: _Mount, inner: int, attr: Attr) -> Attr:
        flags = attr.flags
        if inner == abi.ROOT_ID and self._submounts:
            flags |= abi.ATTR_SUBMOUNT
        return attr._replace(ino=m.slot << SLOT_SHIFT | (attr.ino & INNER_MASK), flags=flags)

    def _entry(self, m: _Mount, e: Entry) -> Entry:
        if e.ino == 0:
            return e  # negative entry
        if e.ino > INNER_MASK:
            raise fs_error(errno.EOVERFLOW)
        return Entry(
            m.slot << SLOT_SHIFT | e.ino, self._attr(m, e.ino, e.attr), e.timeouts, m.generation
        )

    def _pseudo(self, ino: int) -> _Dir:
        d = self._dirs.get(ino)
        if d is None:
            raise fs_error(errno.ESTALE)
        return d

    def _pseudo_attr(self, d: _Dir) -> Attr:
        sec, nsec = divmod(self._ctime, 1_000_000_000)
        return Attr(
            d.ino,
            0,
            0,
            sec,
            sec,
            sec,
            nsec,
            nsec,
            nsec,
            stat.S_IFDIR | 0o755,
            2 + sum(1 for c in d.children.values()),
            0,
            0,
            0,
        )

    def _child_entry(self, child: int) -> Entry:
        """The entry for a name in a pseudo dir: another pseudo dir or a mount root."""
        m, inner = self._at(child)
        if m is None:
            return Entry(child, self._pseudo_attr(self._pseudo(child)), self._timeouts)
        attr, t = m.fs.getattr(inner, None)
        # The name -> mount binding is ours (it can change); the attributes are the fs's.
        timeouts = Timeouts(self._timeouts.entry_sec, self._timeouts.entry_nsec, *t[2:])
        return Entry(child, self._attr(m, inner, attr), timeouts, m.generation)

    def _same(self, a: int, b: int) -> tuple[_Mount, int, int]:
        ma, ia = self._at(a)
        mb, ib = self._at(b)
        if ma is None or mb is None:
            if ma is mb:
                raise fs_error(errno.EROFS)
            raise fs_error(errno.EXDEV)
        if ma is not mb:
            raise fs_error(errno.EXDEV)
        return ma, ia, ib

    # --- session ---------------------------------------------------------------------------------
    def init(self, capable: int) -> int:
        with self._lock:
            self._capable = capable
            self._submounts = bool(capable & abi.SUBMOUNTS)
            want = abi.SUBMOUNTS
            for m in self._mounts.values():
                want |= m.fs.init(capable)
        return want

    def destroy(self) -> None:
        with self._lock:
            self._capable = None
            for m in self._mounts.values():
                m.fs.destroy()

    # --- names and attributes ------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> Entry:
        m, inner = self._at(parent)
        if m is not None:
            return self._entry(m, m.fs.lookup(inner, name))
        child = self._pseudo(inner).children.get(name)
        if child is None:
            raise fs_error(errno.ENOENT)
        return self._child_entry(child)

    def forget(self, ino: int, nlookup: int) -> None:
        try:
            m, inner = self._at(ino)
        except OSError:
            return  # unmounted: nothing left to forget
        if m is not None:
            m.fs.forget(inner, nlookup)

    def getattr(self, ino: int, fh: int | None) -> tuple[Attr, Timeouts]:
        m, inner = self._at(ino)
        if m is None:
            return self._pseudo_attr(self._pseudo(inner)), self._timeouts
        attr, t = m.fs.getattr(inner, fh)
        return self._attr(m, inner, attr), t

    def readlink(self, ino: int) -> bytes:
        m, inner = self._at(ino)
        if m is None:
            raise fs_error(errno.EINVAL)
        return m.fs.readlink(inner)

    def access(self, ino: int, mask: int, uid: int, gid: int) -> None:
        m, inner = self._at(ino)
        if m is not None:
            m.fs.access(inner, mask, uid, gid)
        elif mask & 2:  # W_OK
            raise fs_error(errno.EROFS)

    def statfs(self, ino: int) -> StatFs:
        m, inner = self._at(ino)
        if m is None:
            return StatFs(0, 0, 0, len(self._dirs), 0, 4096, abi.NAME_MAX, 4096)
        return m.fs.statfs(inner)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        m, inner = self._at(ino)
        if m is None:
            raise fs_error(errno.ENODATA)
        return m.fs.getxattr(inner, name)

    def listxattr(self, ino: int) -> list[bytes]:
        m, inner = self._at(ino)
        return [] if m is None else m.fs.listxattr(inner)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int) -> None:
        m, inner = self._at(ino)
        if m is None:
            raise fs_error(errno.EROFS)
        m.fs.setxattr(inner, name, value, flags)

    def removexattr(self, ino: int, name: bytes) -> None:
        m, inner = self._at(ino)
        if m is None:
            raise fs_error(errno.EROFS)
        m.fs.removexattr(inner, name)

    def setattr(
        self, ino: int, valid: int, values: SetAttr, fh: int | None
    ) -> tuple[Attr, Timeouts]:
        m, inner = self._at(ino)
        if m is None:
            raise fs_error(errno.EROFS)
        attr, t = m.fs.setattr(inner, valid, values, fh)
        return self._attr(m, inner, attr), t

    # --- files ------------------------------------------------------------------------------------
    def open(self, ino: int, flags: int) -> tuple[int, int]:
        m, inner = self._at(ino)
        if m is None:
            raise fs_error(errno.EISDIR)
        return m.fs.open(inner, flags)

    def read(self, ino: int, fh: int, offset: int, size: int) -> bytes | bytearray:
        m, inner = self._at(ino)
        if m is None:
            raise fs_error(errno.EISDIR)
        return m.fs.read(inner, fh, offset, size)

    def write(self, ino: int, fh: int, offset: int, data: memoryview, flags: int) -> int:
        m, inner = self._at(ino)
        if m is None:
            raise fs_error(errno.EROFS)
        return m.fs.write(inner, fh, offset, data, flags)

    def lseek(self, ino: int, fh: int, offset: int, whence: int) -> int:
        m, inner = self._at(ino)
        if m is None:
            raise fs_error(errno.EISDIR)
        return m.fs.lseek(inner, fh, offset, whence)

    def flush(self, ino: int, fh: int, lock_owner: int) -> None:
        m, inner = self._at(ino)
        if m is not None:
            m.fs.flush(inner, fh, lock_owner)

    def release(self, ino: int, fh: int, flags: int) -> None:
        m, inner = self._at(ino)
        if m is not None:
            m.fs.release(inner, fh, flags)

    def fsync(self, ino: int, fh: int, datasync: bool) -> None:
        m, inner = self._at(ino)
        if m is not None:
            m.fs.fsync(inner, fh, datasync)

    def fallocate(self, ino: int, fh: int, offset: int, length: int, mode: int) -> None:
        m, inner = self._at(ino)
        if m is None:
            raise fs_error(errno.EROFS)
        m.fs.fallocate(inner, fh, offset, length, mode)

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
        m, a, b = self._same(ino_in, ino_out)
        return m.fs.copy_file_range(a, fh_in, off_in, b, fh_out, off_out, length, flags)

    # --- directories ------------------------------------------------------------------------------
    def opendir(self, ino: int, flags: int) -> tuple[int, int]:
        m, inner = self._at(ino)
        if m is None:
            self._pseudo(inner)
            return 0, 0
        return m.fs.opendir(inner, flags)

    def readdir(self, ino: int, fh: int, offset: int) -> Iterator[DirEntry]:
        m, inner = self._at(ino)
        if m is None:
            d = self._pseudo(inner)
            with self._lock:
                names = sorted(d.children.items())
            items = [(b".", d.ino), (b"..", d.parent), *names]
            return iter([DirEntry(c, i + 1, _DT_DIR, n) for i, (n, c) in enumerate(items)][offset:])
        return self._translated(m, m.fs.readdir(inner, fh, offset))

    @staticmethod
    def _translated(m: _Mount, it: Iterator[DirEntry]) -> Iterator[DirEntry]:
        base = m.slot << SLOT_SHIFT
        try:
            for d in it:
                yield d._replace(ino=base | (d.ino & INNER_MASK))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def readdirplus_entry(self, parent: int, entry: DirEntry) -> Entry | None:
        if entry.name in (b".", b".."):
            return None
        m, inner = self._at(parent)
        if m is None:
            return self._child_entry(entry.ino)
        e = m.fs.readdirplus_entry(inner, entry._replace(ino=entry.ino & INNER_MASK))
        return None if e is None else self._entry(m, e)

    def releasedir(self, ino: int, fh: int) -> None:
        m, inner = self._at(ino)
        if m is not None:
            m.fs.releasedir(inner, fh)

    def fsyncdir(self, ino: int, fh: int, datasync: bool) -> None:
        m, inner = self._at(ino)
        if m is not None:
            m.fs.fsyncdir(inner, fh, datasync)

    def syncfs(self, ino: int) -> None:
        for m in list(self._mounts.values()):
            m.fs.syncfs(abi.ROOT_ID)

    # --- namespace mutations -------------------------------------------------------------------
    def _mounted(self, parent: int) -> tuple[_Mount, int]:
        m, inner = self._at(parent)
        if m is None:
            raise fs_error(errno.EROFS)  # pseudo dirs are fixed by the mount table
        return m, inner

    def mknod(
        self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int, umask: int
    ) -> Entry:
        m, inner = self._mounted(parent)
        return self._entry(m, m.fs.mknod(ctx, inner, name, mode, rdev, umask))

    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int, umask: int) -> Entry:
        m, inner = self._mounted(parent)
        return self._entry(m, m.fs.mkdir(ctx, inner, name, mode, umask))

    def symlink(self, ctx: Context, parent: int, name: bytes, target: bytes) -> Entry:
        m, inner = self._mounted(parent)
        return self._entry(m, m.fs.symlink(ctx, inner, name, target))

    def link(self, ino: int, newparent: int, newname: bytes) -> Entry:
        m, a, b = self._same(ino, newparent)
        return self._entry(m, m.fs.link(a, b, newname))

    def unlink(self, parent: int, name: bytes) -> None:
        m, inner = self._mounted(parent)
        m.fs.unlink(inner, name)

    def rmdir(self, parent: int, name: bytes) -> None:
        m, inner = self._mounted(parent)
        m.fs.rmdir(inner, name)

    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes, flags: int) -> None:
        m, a, b = self._same(parent, newparent)
        m.fs.rename(a, name, b, newname, flags)

    def create(
        self, ctx: Context, parent: int, name: bytes, flags: int, mode: int, umask: int
    ) -> tuple[Entry, int, int]:
        m, inner = self._mounted(parent)
        e, fh, oflags = m.fs.create(ctx, inner, name, flags, mode, umask)
        return self._entry(m, e), fh, oflags

    def tmpfile(
        self, ctx: Context, parent: int, flags: int, mode: int, umask: int
    ) -> tuple[Entry, int, int]:
        m, inner = self._mounted(parent)
        e, fh, oflags = m.fs.tmpfile(ctx, inner, flags, mode, umask)
        return self._entry(m, e), fh, oflags
