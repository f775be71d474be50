"""The read-only image file system: a bootstrap's tree served over FUSE.

Metadata comes from the mapped bootstrap; file data comes chunk by chunk from a
``ChunkSource`` (the storage layer: backend -> verify -> cache). Node ids are the
bootstrap's inode numbers (root = 1 = FUSE_ROOT_ID), generation 0: an image never
reuses an inode number, so nothing the guest caches can go stale.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Iterator
from typing import Protocol

from ..errors import ImageError, VnydusError
from ..format.reader import Bootstrap, Inode
from . import abi
from .filesystem import (
    Attr,
    CachePolicy,
    DirEntry,
    Entry,
    FileRange,
    FileSystem,
    StatFs,
    Timeouts,
    check_access,
    encode_rdev,
    fs_error,
)

log = logging.getLogger(__name__)


class ChunkSource(Protocol):
    """Where chunk data comes from. The storage layer implements it.

    ``read_chunk`` returns the chunk's *uncompressed* bytes, already checked against the
    digest the bootstrap pins (never unverified bytes), exactly ``uncompressed_size`` long.
    It raises ``ImageError`` or ``BackendError`` (errors.py) when it cannot; the file
    system turns that into EIO with a log line naming the blob and chunk.
    It may block (fetch from a backend): the daemon runs FUSE requests in worker threads.
    """

    def read_chunk(self, chunk_index: int) -> bytes: ...


class CachedChunkSource(ChunkSource, Protocol):
    """A source that can also say where a chunk's verified bytes sit in a cache file, so
    a small read copies only what it needs (as the C fast path does) instead of the whole
    chunk. The storage layer's ``ChunkStore`` is one; ImageFS uses this when present."""

    def cache_location(self, chunk_index: int) -> tuple[int, int, int] | None:
        """(fd, offset, size) of the verified bytes, or None if not cached yet."""
        ...


class LookupCounts(Protocol):
    """Lookup counts kept outside the fs: the C fast path's shared atomic array."""

    def add(self, ino: int) -> None: ...
    def forget(self, ino: int, nlookup: int) -> None: ...
    def clear(self) -> None: ...


_U64 = (1 << 64) - 1
_DT_DIR = stat.S_IFDIR >> 12
_BLKSIZE = 4096


def attr_of(node: Inode, chunk_size: int) -> Attr:
    sec = node.mtime_sec & _U64  # fuse_attr times are u64 carrying an s64
    nsec = node.mtime_nsec
    size = node.size
    # Blocks count stored chunks, so holes show (du, cp --sparse and tar look at this);
    # a short last chunk may be counted whole when the file also has holes.
    stored = min(node.data_count * chunk_size, size) if node.is_reg else size
    return Attr(
        node.ino,
        size,
        (stored + 511) >> 9,
        sec,
        sec,
        sec,
        nsec,
        nsec,
        nsec,
        node.mode,
        node.nlink,
        node.uid,
        node.gid,
        encode_rdev(node.rdev) if node.rdev else 0,
        _BLKSIZE,
        0,
    )


class ImageFS(FileSystem):
    """Serves one bootstrap. Safe to call from several threads at once."""

    def __init__(
        self,
        bootstrap: Bootstrap,
        chunks: ChunkSource,
        *,
        policy: CachePolicy = CachePolicy.ALWAYS,
    ) -> None:
        self.bs = bootstrap
        self.chunks = chunks
        self._locate = getattr(chunks, "cache_location", None)
        self.policy = policy
        self._timeouts = policy.timeouts
        # Names never appear in an image, so a miss can be cached as long as a hit.
        self._negative = Entry.negative(self._timeouts) if self._timeouts.entry_sec else None
        if policy.keep_cache:
            self._open_flags = abi.FOPEN_KEEP_CACHE
        elif policy.direct_io:
            self._open_flags = abi.FOPEN_DIRECT_IO
        else:
            self._open_flags = 0
        self._dir_flags = abi.FOPEN_CACHE_DIR | self._open_flags if policy.keep_cache else 0
        self._lock = threading.Lock()
        # Lookup counts: nothing is freed at zero (the bootstrap holds every node), but
        # they are the session's record of what the guest holds (metrics, tests).
        self.lookups: dict[int, int] = {}
        self._shared: LookupCounts | None = None  # replaces ``lookups`` once attached

    def share_lookups(self, counts: LookupCounts) -> None:
        """Count lookups in ``counts`` from now on (the C fast path counts there too)."""
        with self._lock:
            self.lookups.clear()
            counts.clear()
            self._shared = counts

    # --- session ---------------------------------------------------------------------------
    def init(self, capable: int) -> int:
        self.destroy()
        return 0

    def destroy(self) -> None:
        with self._lock:
            self.lookups.clear()
            if self._shared is not None:
                self._shared.clear()

    # --- helpers -----------------------------------------------------------------------------
    def _valid(self, ino: int) -> None:
        if not 0 < ino <= self.bs.inode_count:
            raise fs_error(errno.ESTALE)  # a node id we never handed out

    def _inode(self, ino: int) -> Inode:
        self._valid(ino)
        return self.bs.inode(ino)

    def _counted(self, ino: int) -> Entry:
        entry = Entry(ino, attr_of(self._inode(ino), self.bs.chunk_size), self._timeouts)
        if self._shared is not None:
            self._shared.add(ino)
            return entry
        with self._lock:
            self.lookups[ino] = self.lookups.get(ino, 0) + 1
        return entry

    def _regular(self, ino: int) -> Inode:
        node = self._inode(ino)
        if not node.is_reg:
            raise fs_error(errno.EISDIR if node.is_dir else errno.EINVAL)
        return node

    # --- names and attributes ------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> Entry:
        self._valid(parent)
        ino = self.bs.lookup(parent, name)
        if ino is None:
            if not self._inode(parent).is_dir:
                raise fs_error(errno.ENOTDIR)
            if self._negative is None:
                raise fs_error(errno.ENOENT)
            return self._negative
        return self._counted(ino)

    def forget(self, ino: int, nlookup: int) -> None:
        if self._shared is not None:
            self._shared.forget(ino, nlookup)
            return
        with self._lock:
            left = self.lookups.get(ino, 0) - nlookup
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups.pop(ino, None)

    def getattr(self, ino: int, fh: int | None) -> tuple[Attr, Timeouts]:
        return attr_of(self._inode(ino), self.bs.chunk_size), self._timeouts

    def readlink(self, ino: int) -> bytes:
        if not self._inode(ino).is_symlink:
            raise fs_error(errno.EINVAL)
        return self.bs.readlink(ino)

    def access(self, ino: int, mask: int, uid: int, gid: int) -> None:
        node = self._inode(ino)
        if mask & os.W_OK:
            raise fs_error(errno.EROFS)
        check_access(node.mode, node.uid, node.gid, mask, uid, gid)

    def statfs(self, ino: int) -> StatFs:
        self._valid(ino)
        data = sum(b.uncompressed_size for b in self.bs.blobs)
        blocks = (data + _BLKSIZE - 1) // _BLKSIZE
        return StatFs(blocks, 0, 0, self.bs.inode_count, 0, _BLKSIZE, abi.NAME_MAX, _BLKSIZE)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        self._valid(ino)
        value = self.bs.getxattr(ino, name)
        if value is None:
            raise fs_error(errno.ENODATA)
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        self._valid(ino)
        return self.bs.listxattr(ino)

    # --- files ---------------------------------------------------------------------------------
    def open(self, ino: int, flags: int) -> tuple[int, int]:
        node = self._inode(ino)
        if node.is_dir:
            raise fs_error(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise fs_error(errno.EROFS)
        return 0, self._open_flags

    def read(self, ino: int, fh: int, offset: int, size: int) -> bytes | bytearray:
        node = self._regular(ino)
        end = min(offset + size, node.size)
        if offset >= end:
            return b""
        cs = self.bs.chunk_size
        out: bytearray | None = None
        for foff, index in self.bs.chunks_covering(ino, offset, end - offset):
            lo = max(foff, offset)
            hi = min(foff + cs, end)
            part = self._chunk_part(ino, index, lo - foff, hi - lo)
            if lo == offset and hi == end:
                return part  # one chunk holds the whole range: no assembly
            if out is None:
                out = bytearray(end - offset)  # holes stay zero
            out[lo - offset : hi - offset] = part
        return out if out is not None else bytes(end - offset)

    def read_ranges(
        self, ino: int, fh: int, offset: int, size: int
    ) -> list[bytes | FileRange] | None:
        """Cached chunks as ranges of their cache files (copied into the guest by preadv),
        chunks not cached yet fetched now as bytes, holes as zeros."""
        if self._locate is None:
            return None
        node = self._regular(ino)
        end = min(offset + size, node.size)
        parts: list[bytes | FileRange] = []
        pos = offset
        cs = self.bs.chunk_size
        for foff, index in self.bs.chunks_covering(ino, offset, end - offset):
            lo = max(foff, offset)
            hi = min(foff + cs, end)
            if lo > pos:
                parts.append(bytes(lo - pos))
            try:
                loc = self._locate(index)
            except VnydusError as e:
                self._log_chunk_error(ino, index, str(e))
                raise fs_error(errno.EIO) from e
            if loc is not None and hi - foff <= loc[2]:
                parts.append(FileRange(loc[0], loc[1] + lo - foff, hi - lo))
            else:  # not cached yet (or inconsistent: let the checked path say so)
                parts.append(self._chunk_part(ino, index, lo - foff, hi - lo))
            pos = hi
        if pos < end:
            parts.append(bytes(end - pos))
        return parts

    def _chunk_part(self, ino: int, index: int, start: int, length: int) -> bytes:
        """Bytes [start, start+length) of chunk ``index``'s verified data, or EIO."""
        try:
            loc = self._locate(index) if self._locate is not None else None
            if loc is not None:
                fd, off, size = loc
                data = os.pread(fd, min(length, size - start), off + start)
            else:
                data = self.chunks.read_chunk(index)[start : start + length]
        except (VnydusError, OSError) as e:
            self._log_chunk_error(ino, index, str(e))
            raise fs_error(errno.EIO) from e
        if len(data) != length:
            self._log_chunk_error(ino, index, f"{len(data)} bytes where {length} were due")
            raise fs_error(errno.EIO)
        return data

    def _log_chunk_error(self, ino: int, index: int, why: str) -> None:
        try:
            c = self.bs.chunk(index)
            blob = self.bs.blobs[c.blob_index].digest
            where = f"blob {blob} chunk {index} ({c.digest.hex()[:16]})"
        except ImageError:
            where = f"chunk {index}"
        log.error("image read of inode %d: %s: %s", ino, where, why)

    def lseek(self, ino: int, fh: int, offset: int, whence: int) -> int:
        node = self._regular(ino)
        size = node.size
        if offset >= size:
            raise fs_error(errno.ENXIO)
        cs = self.bs.chunk_size
        pos = offset
        for foff, _ in self.bs.chunks_covering(ino, offset, size - offset):
            if whence == abi.SEEK_DATA:
                return max(foff, offset)
            if foff > pos:
                return pos  # a hole before this chunk
            pos = foff + cs
        if whence == abi.SEEK_DATA:
            raise fs_error(errno.ENXIO)  # only holes from offset to the end
        return min(pos, size)

    # --- directories ----------------------------------------------------------------------------
    @property
    def open_flags(self) -> int:
        """open_flags of every read-only OPEN reply (the C fast path answers with them too)."""
        return self._open_flags

    @property
    def opendir_flags(self) -> int:
        """open_flags of every OPENDIR reply (the C fast path answers with them too)."""
        return self._dir_flags

    def opendir(self, ino: int, flags: int) -> tuple[int, int]:
        if not self._inode(ino).is_dir:
            raise fs_error(errno.ENOTDIR)
        return 0, self._dir_flags

    def readdir(self, ino: int, fh: int, offset: int) -> Iterator[DirEntry]:
        """Cookies: "." is 1, ".." is 2, stored entry i is i + 3 (stable: never changes)."""
        node = self._inode(ino)
        if not node.is_dir:
            raise fs_error(errno.ENOTDIR)
        return self._entries(node, offset)

    def _entries(self, node: Inode, offset: int) -> Iterator[DirEntry]:
        if offset < 1:
            yield DirEntry(node.ino, 1, _DT_DIR, b".")
        if offset < 2:
            yield DirEntry(node.parent, 2, _DT_DIR, b"..")
        start = max(offset - 2, 0)
        for i, (name, ino, dtype) in enumerate(self.bs.readdir_typed(node.ino, start), start):
            yield DirEntry(ino, i + 3, dtype, name)

    def readdirplus_entry(self, parent: int, entry: DirEntry) -> Entry | None:
        if entry.name in (b".", b".."):
            return None
        return self._counted(entry.ino)
