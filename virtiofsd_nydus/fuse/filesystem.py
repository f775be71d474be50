"""The interface a file system implements to be served over FUSE.

The server decodes and validates every request, then calls one method here with plain
Python values; the method returns plain values or raises ``OSError(errno, ...)``. The
server owns the wire format; a file system never sees bytes from the guest.

Defaults: read-only operations that every file system must think about raise ENOSYS,
mutations raise EROFS (a read-only file system implements none of them), and the
``sync`` family succeeds doing nothing.

Contracts
- Node ids: ``ROOT_ID`` (1) is the root. A node id handed to the guest (in an ``Entry``)
  stays valid until its lookup count drops to zero.
- Lookup counts: every ``Entry`` returned by ``lookup``, ``readdirplus_entry``, ``create``,
  ``mknod``, ``mkdir``, ``symlink`` and ``link`` adds one to that node's lookup count
  (a negative entry, ino 0, is not a lookup). The server asks ``readdirplus_entry`` only
  for records it is about to send. ``forget(ino, n)`` subtracts ``n``; at zero the file
  system may drop the node. A node id it does not know gets ESTALE.
  ``init`` starts a new session: every count is zero, every open handle is gone.
- Handles: ``open``/``opendir`` return ``(fh, open_flags)``; the guest passes ``fh``
  back on read/readdir/release. A file system may return 0 when it keeps no state.
- Names are validated by the server (non-empty, no '/', no NUL, at most 255 bytes, not
  "." or ".."); a file system may rely on that.
- Exceptions: ``OSError`` carries the errno sent to the guest. ``ImageError`` and
  ``BackendError`` become EIO (and are logged); anything else is a bug, logged, EIO.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from enum import Enum
from typing import NamedTuple

from . import abi


class Attr(NamedTuple):
    """fuse_attr, in wire order (``abi.ATTR.pack(*attr)``)."""

    ino: int
    size: int
    blocks: int  # 512-byte units
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
    blksize: int = 4096
    flags: int = 0


ZERO_ATTR = Attr(*(0,) * 16)


class Timeouts(NamedTuple):
    """How long the guest may cache a name (entry) and attributes, split for the wire."""

    entry_sec: int
    entry_nsec: int
    attr_sec: int
    attr_nsec: int

    @classmethod
    def of(cls, entry: float, attr: float) -> Timeouts:
        es, en = _split(entry)
        as_, an = _split(attr)
        return cls(es, en, as_, an)


def _split(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, round((seconds - whole) * 1e9)


class CachePolicy(Enum):
    """virtiofsd's ``--cache``: how long the guest may trust what it has cached.

    ``never``: no caching (timeouts 0, page cache dropped on open); ``metadata``: names
    and attributes for a day, data not kept across opens; ``auto``: one second;
    ``always``: a day, and the page cache survives reopening. An image never changes,
    so the image fs uses ``always``.
    """

    NEVER = "never"
    METADATA = "metadata"
    AUTO = "auto"
    ALWAYS = "always"

    @property
    def timeouts(self) -> Timeouts:
        return _TIMEOUTS[self]

    @property
    def keep_cache(self) -> bool:
        """Whether opens may keep the guest's page cache (FOPEN_KEEP_CACHE)."""
        return self is CachePolicy.ALWAYS

    @property
    def direct_io(self) -> bool:
        return self is CachePolicy.NEVER


_DAY = 86400.0
_TIMEOUTS = {
    CachePolicy.NEVER: Timeouts.of(0.0, 0.0),
    CachePolicy.METADATA: Timeouts.of(_DAY, _DAY),
    CachePolicy.AUTO: Timeouts.of(1.0, 1.0),
    CachePolicy.ALWAYS: Timeouts.of(_DAY, _DAY),
}


class Entry(NamedTuple):
    """What LOOKUP (and each READDIRPLUS record) tells the guest about a node.

    ``ino`` 0 is a negative entry: LOOKUP's way to say "no such name, and you may cache
    that for ``timeouts.entry``" (right for a file system that never changes). It is
    not a lookup and is never forgotten.
    """

    ino: int
    attr: Attr
    timeouts: Timeouts
    generation: int = 0

    @classmethod
    def negative(cls, timeouts: Timeouts) -> Entry:
        return cls(0, ZERO_ATTR, timeouts)


class DirEntry(NamedTuple):
    """One READDIR record. ``off`` is the cookie that resumes *after* this entry."""

    ino: int
    off: int
    type: int  # DT_* (mode >> 12)
    name: bytes


class StatFs(NamedTuple):
    """fuse_kstatfs, in wire order."""

    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int
    frsize: int


class FileRange(NamedTuple):
    """``length`` bytes at ``offset`` of host file ``fd``: READ data the transport copies
    straight into guest memory (preadv) instead of through Python bytes."""

    fd: int
    offset: int
    length: int


def fs_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class FileSystem:
    """Base class: override what the file system supports. See the module docstring."""

    # --- session -----------------------------------------------------------------------
    def init(self, capable: int) -> int:
        """A new session starts (INIT). ``capable``: the guest's 64-bit INIT flags.

        Reset all per-session state. Return extra INIT flags the file system wants
        beyond the server's defaults (they are ANDed with ``capable``).
        """
        return 0

    def destroy(self) -> None:
        """The session ended (DESTROY, or a new INIT)."""

    # --- names and attributes -----------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> Entry:
        raise fs_error(errno.ENOSYS)

    def forget(self, ino: int, nlookup: int) -> None:
        """Drop ``nlookup`` references. Never fails (FORGET has no reply)."""

    def batch_forget(self, items: list[tuple[int, int]]) -> None:
        for ino, n in items:
            self.forget(ino, n)

    def getattr(self, ino: int, fh: int | None) -> tuple[Attr, Timeouts]:
        raise fs_error(errno.ENOSYS)

    def readlink(self, ino: int) -> bytes:
        raise fs_error(errno.ENOSYS)

    def access(self, ino: int, mask: int, uid: int, gid: int) -> None:
        raise fs_error(errno.ENOSYS)

    def statfs(self, ino: int) -> StatFs:
        raise fs_error(errno.ENOSYS)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """The value; ENODATA when absent. The server applies the size/ERANGE rules."""
        raise fs_error(errno.ENOSYS)

    def listxattr(self, ino: int) -> list[bytes]:
        """Attribute names (without NUL). The server applies the size/ERANGE rules."""
        raise fs_error(errno.ENOSYS)

    # --- files ---------------------------------------------------------------------------
    def open(self, ino: int, flags: int) -> tuple[int, int]:
        """Return (fh, FOPEN_* flags)."""
        raise fs_error(errno.ENOSYS)

    def read(self, ino: int, fh: int, offset: int, size: int) -> bytes | bytearray:
        """At most ``size`` bytes from ``offset``; short (or empty) only at end of file."""
        raise fs_error(errno.ENOSYS)

    def read_ranges(
        self, ino: int, fh: int, offset: int, size: int
    ) -> list[bytes | FileRange] | None:
        """Optional zero-copy READ: the data ``read`` would return, as pieces in order.

        Only for descriptors that stay open, and bytes that never change, for the file
        system's whole life (a verified chunk cache): the transport reads them after this
        returns. None: not possible here, use ``read``.
        """
        return None

    def lseek(self, ino: int, fh: int, offset: int, whence: int) -> int:
        """SEEK_DATA / SEEK_HOLE; ENXIO when no data (or offset past the end)."""
        raise fs_error(errno.ENOSYS)

    def flush(self, ino: int, fh: int, lock_owner: int) -> None:
        pass

    def release(self, ino: int, fh: int, flags: int) -> None:
        pass

    def fsync(self, ino: int, fh: int, datasync: bool) -> None:
        pass

    # --- directories ---------------------------------------------------------------------
    def opendir(self, ino: int, flags: int) -> tuple[int, int]:
        raise fs_error(errno.ENOSYS)

    def readdir(self, ino: int, fh: int, offset: int) -> Iterator[DirEntry]:
        """Entries after cookie ``offset`` (0 = from the start), "." and ".." included.

        The server stops pulling when its buffer is full and closes the iterator; the
        next call resumes from the last entry it sent.
        """
        raise fs_error(errno.ENOSYS)

    def readdirplus_entry(self, parent: int, entry: DirEntry) -> Entry | None:
        """The ``Entry`` for one READDIRPLUS record the server is about to send.

        Counts as a lookup. None for "." and ".." (sent without attributes, as the
        kernel ignores them). The default looks the name up.
        """
        if entry.name in (b".", b".."):
            return None
        return self.lookup(parent, entry.name)

    def releasedir(self, ino: int, fh: int) -> None:
        pass

    def fsyncdir(self, ino: int, fh: int, datasync: bool) -> None:
        pass

    def syncfs(self, ino: int) -> None:
        pass

    # --- mutations: a read-only file system inherits EROFS for all of them ----------------
    def setattr(
        self, ino: int, valid: int, values: SetAttr, fh: int | None
    ) -> tuple[Attr, Timeouts]:
        raise fs_error(errno.EROFS)

    def mknod(
        self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int, umask: int
    ) -> Entry:
        raise fs_error(errno.EROFS)

    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int, umask: int) -> Entry:
        raise fs_error(errno.EROFS)

    def symlink(self, ctx: Context, parent: int, name: bytes, target: bytes) -> Entry:
        raise fs_error(errno.EROFS)

    def link(self, ino: int, newparent: int, newname: bytes) -> Entry:
        raise fs_error(errno.EROFS)

    def unlink(self, parent: int, name: bytes) -> None:
        raise fs_error(errno.EROFS)

    def rmdir(self, parent: int, name: bytes) -> None:
        raise fs_error(errno.EROFS)

    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes, flags: int) -> None:
        raise fs_error(errno.EROFS)

    def create(
        self, ctx: Context, parent: int, name: bytes, flags: int, mode: int, umask: int
    ) -> tuple[Entry, int, int]:
        """Return (entry, fh, open_flags)."""
        raise fs_error(errno.EROFS)

    def tmpfile(
        self, ctx: Context, parent: int, flags: int, mode: int, umask: int
    ) -> tuple[Entry, int, int]:
        raise fs_error(errno.EROFS)

    def write(self, ino: int, fh: int, offset: int, data: memoryview, flags: int) -> int:
        raise fs_error(errno.EROFS)

    def fallocate(self, ino: int, fh: int, offset: int, length: int, mode: int) -> None:
        raise fs_error(errno.EROFS)

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
        raise fs_error(errno.EROFS)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int) -> None:
        raise fs_error(errno.EROFS)

    def removexattr(self, ino: int, name: bytes) -> None:
        raise fs_error(errno.EROFS)


class Context(NamedTuple):
    """Who asked: the creds a mutating file system creates things as."""

    uid: int
    gid: int
    pid: int


class SetAttr(NamedTuple):
    """SETATTR values; only those whose FATTR_* bit is in ``valid`` mean anything."""

    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int


def check_access(mode: int, owner: int, group: int, mask: int, uid: int, gid: int) -> None:
    """The classic permission check for ACCESS (the guest usually checks itself with
    default_permissions). Only the caller's primary group is known. W_OK is the caller's
    business on a read-only file system (EROFS first)."""
    if mask == os.F_OK:
        return
    if uid == 0:
        # root may read and write anything; execute only what some x bit (or a dir) allows
        if mask & os.X_OK and not (stat.S_ISDIR(mode) or mode & 0o111):
            raise fs_error(errno.EACCES)
        return
    if uid == owner:
        bits = (mode >> 6) & 7
    elif gid == group:
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    if mask & 7 & ~bits:
        raise fs_error(errno.EACCES)


def encode_rdev(rdev: int) -> int:
    """st_rdev -> the kernel's 32-bit new_encode_dev() form that fuse_attr.rdev carries."""
    major, minor = os.major(rdev), os.minor(rdev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def decode_rdev(dev: int) -> int:
    """The kernel's new_decode_dev (the u32 MKNOD carries) -> st_rdev."""
    return os.makedev((dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00))


def dtype_of(mode: int) -> int:
    """DT_* from st_mode (the kernel's IFTODT)."""
    return (mode >> 12) & 0o17


ROOT_ID = abi.ROOT_ID
