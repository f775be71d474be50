"""The local chunk cache: one sparse file of uncompressed data per blob, plus bitmaps.

Layout (see docs/storage.md): ``<hex>.data`` holds each chunk's uncompressed bytes at the
chunk's ``uncompressed_offset``; ``<hex>.map`` is a 64-byte header and a "present" bitmap
with one bit per slot (slot = uncompressed_offset // slot_size, bit i = byte i>>3,
mask 1 << (i & 7)). Both are plain memory (an mmap and a bytearray) so the C fast path can
test a bit and ``preadv`` the data file without Python.

The cache is untrusted: a map whose header or size is wrong starts empty, and a "present"
bit only says where to look. No byte is served before its chunk digest matched in this
process's lifetime, which the in-memory "verified" bitmap records.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import struct
import tempfile
import threading
from pathlib import Path

import structlog

from ..errors import ImageError, LocalError
from .backend import digest_hex

log = structlog.get_logger(__name__)

MAGIC = b"VNCMAP\x00\x01"
VERSION = 1
# magic, version, slot_size, data_size, nbits, sha256 of the blob; padded to HEADER_SIZE
_HEADER = struct.Struct("<8sIIQQ32s")
HEADER_SIZE = 64  # the present bits start here in the map file


def _nbits(data_size: int, slot_size: int) -> int:
    return -(-data_size // slot_size)


def _pack_header(blob_digest: str, data_size: int, slot_size: int) -> bytes:
    raw = bytes.fromhex(digest_hex(blob_digest))
    head = _HEADER.pack(MAGIC, VERSION, slot_size, data_size, _nbits(data_size, slot_size), raw)
    return head.ljust(HEADER_SIZE, b"\0")


class BlobCache:
    """The cache of one blob. Bits are indexed by slot; callers keep slots in range."""

    def __init__(self, blob_digest: str, data_size: int, slot_size: int, fd: int, map_fd: int):
        self.digest = blob_digest
        self.data_size = data_size
        self.slot_size = slot_size
        self.nslots = _nbits(data_size, slot_size)
        self.fd = fd  # the data file, read-write; C preads verified slots from it
        nbytes = (self.nslots + 7) // 8
        self.present = mmap.mmap(map_fd, HEADER_SIZE + nbytes)  # shared: persists
        os.close(map_fd)
        self.verified = bytearray(nbytes)  # this lifetime only; never resized
        self._lock = threading.Lock()

    # -- bits ---------------------------------------------------------------------------
    def is_present(self, slot: int) -> bool:
        return bool(self.present[HEADER_SIZE + (slot >> 3)] >> (slot & 7) & 1)

    def is_verified(self, slot: int) -> bool:
        return bool(self.verified[slot >> 3] >> (slot & 7) & 1)

    def mark_verified(self, slot: int) -> None:
        """The slot's bytes in the data file matched their digest (present stays set)."""
        with self._lock:
            self.present[HEADER_SIZE + (slot >> 3)] |= 1 << (slot & 7)
            self.verified[slot >> 3] |= 1 << (slot & 7)

    def drop(self, slot: int) -> None:
        """Forget a slot whose cached bytes are bad (both bits).

        Clearing a verified bit races with a C reader that has just tested it; only an
        on-demand scrub finding the file changed under us does that.
        """
        keep = ~(1 << (slot & 7)) & 0xFF
        with self._lock:
            self.present[HEADER_SIZE + (slot >> 3)] &= keep
            self.verified[slot >> 3] &= keep

    # -- data -----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        """Bytes of the data file (short if the file was truncated behind our back)."""
        parts: list[bytes] = []
        got = 0
        while got < size:
            part = os.pread(self.fd, size - got, offset + got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)

    def close(self) -> None:
        self.present.close()
        os.close(self.fd)


class CacheDir:
    """A directory of blob caches; one BlobCache per blob digest per process.

    Images sharing a blob share its cache and its "verified" bits, so a chunk is checked
    once per lifetime whichever image reads it first.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalError(f"cannot create cache dir {self.path}: {exc.strerror}") from None
        self._blobs: dict[str, BlobCache] = {}
        self._lock = threading.Lock()

    def data_path(self, blob_digest: str) -> Path:
        return self.path / f"{digest_hex(blob_digest)}.data"

    def map_path(self, blob_digest: str) -> Path:
        return self.path / f"{digest_hex(blob_digest)}.map"

    def open(self, blob_digest: str, data_size: int, slot_size: int) -> BlobCache:
        """The cache of a blob, reusing what an earlier process left when it is sound."""
        with self._lock:
            bc = self._blobs.get(blob_digest)
            if bc is not None:
                if (bc.data_size, bc.slot_size) != (data_size, slot_size):
                    raise ImageError(
                        f"blob {blob_digest}: images disagree on its layout "
                        f"({bc.data_size}/{bc.slot_size} vs {data_size}/{slot_size})"
                    )
                return bc
            header = _pack_header(blob_digest, data_size, slot_size)
            fds = self._reuse(blob_digest, header, data_size)
            if fds is None:
                fds = self._create(blob_digest, header, data_size)
            bc = BlobCache(blob_digest, data_size, slot_size, *fds)
            self._blobs[blob_digest] = bc
            return bc

    def _reuse(self, blob_digest: str, header: bytes, data_size: int) -> tuple[int, int] | None:
        nbytes = (_HEADER.unpack_from(header)[4] + 7) // 8
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        fds: list[int] = []
        try:
            map_fd = os.open(self.map_path(blob_digest), flags)
            fds.append(map_fd)
            data_fd = os.open(self.data_path(blob_digest), flags)
            fds.append(data_fd)
            mst, dst = os.fstat(map_fd), os.fstat(data_fd)
            why = None
            if not (stat.S_ISREG(mst.st_mode) and stat.S_ISREG(dst.st_mode)):
                why = "not regular files"
            elif mst.st_size != HEADER_SIZE + nbytes:
                why = f"map size {mst.st_size} != {HEADER_SIZE + nbytes}"
            elif os.pread(map_fd, HEADER_SIZE, 0) != header:
                why = "map header does not match"
            elif dst.st_size != data_size:
                why = f"data size {dst.st_size} != {data_size}"
            if why is None:
                return data_fd, map_fd
            log.info("cache for blob is unusable, starting empty", blob=blob_digest, reason=why)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.info("cache for blob is unreadable, starting empty", blob=blob_digest, error=exc)
        for fd in fds:
            os.close(fd)
        return None

    def _create(self, blob_digest: str, header: bytes, data_size: int) -> tuple[int, int]:
        """Write fresh files under temporary names, then rename: never a half-made file.

        The map goes first: a crash between the renames leaves an empty map over old data,
        which only costs refetches (and stale "present" bits would be re-verified anyway).
        """
        nbytes = (_HEADER.unpack_from(header)[4] + 7) // 8
        map_fd = self._fresh(self.map_path(blob_digest), header, HEADER_SIZE + nbytes)
        try:
            data_fd = self._fresh(self.data_path(blob_digest), b"", data_size)
        except BaseException:
            os.close(map_fd)
            raise
        return data_fd, map_fd

    def _fresh(self, path: Path, head: bytes, size: int) -> int:
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-", suffix=path.suffix)
        except OSError as exc:
            raise LocalError(f"cannot write cache in {self.path}: {exc.strerror}") from None
        try:
            os.pwrite(fd, head, 0)
            os.ftruncate(fd, size)  # sparse: holes until chunks arrive
            os.replace(tmp, path)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise LocalError(f"cannot write cache file {path}: {exc.strerror}") from None
        return fd

    def close(self) -> None:
        with self._lock:
            for bc in self._blobs.values():
                bc.close()
            self._blobs.clear()
