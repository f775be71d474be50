"""Chunk records as storage sees them, their sanity checks, and decode + verify.

Pure functions over bytes: no files, no backends. ``decode_chunk`` is the one place where
untrusted stored bytes become chunk data, and it either returns exactly the bytes whose
blake3 digest the bootstrap pinned or raises BadChunk.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

import blake3
import zstandard

from ..errors import ImageError
from ..format.model import MAX_CHUNK_SIZE

DIGEST_SIZE = 32


class ChunkRecord(Protocol):
    """What storage reads of a chunk (``format.model.Chunk`` and the reader's view)."""

    @property
    def digest(self) -> bytes: ...
    @property
    def blob_index(self) -> int: ...
    @property
    def compressed_offset(self) -> int: ...
    @property
    def compressed_size(self) -> int: ...
    @property
    def uncompressed_offset(self) -> int: ...
    @property
    def uncompressed_size(self) -> int: ...
    @property
    def compressed(self) -> bool: ...


class BlobRecord(Protocol):
    @property
    def digest(self) -> str: ...
    @property
    def compressed_size(self) -> int: ...
    @property
    def uncompressed_size(self) -> int: ...


class ChunkTable(Protocol):
    """An image's chunk table, indexed by chunk index (a list, or a bootstrap's view)."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> ChunkRecord: ...


class BootstrapLike(Protocol):
    """What ``ChunkStore.from_bootstrap`` reads of a mapped bootstrap (format.reader)."""

    @property
    def chunk_count(self) -> int: ...
    @property
    def chunk_size(self) -> int: ...
    @property
    def blobs(self) -> Sequence[BlobRecord]: ...
    def chunk(self, index: int) -> ChunkRecord: ...


class BootstrapChunks:
    """A bootstrap's chunk table as a ChunkTable: records are read on demand (O(1) open)."""

    __slots__ = ("_bs",)

    def __init__(self, bs: BootstrapLike) -> None:
        self._bs = bs

    def __len__(self) -> int:
        return self._bs.chunk_count

    def __getitem__(self, index: int, /) -> ChunkRecord:
        return self._bs.chunk(index)


class BadChunk(Exception):
    """Stored bytes did not decode to the chunk the bootstrap describes (internal signal)."""


def check_chunk(index: int, c: ChunkRecord, nblobs: int, slot_size: int) -> None:
    """Refuse a chunk record the cache layout cannot hold (ImageError).

    Each chunk owns one slot of its blob's cache: its uncompressed offset is a multiple of
    the slot size and its data fits in the slot.
    """
    why = None
    if not 0 <= c.blob_index < nblobs:
        why = f"blob index {c.blob_index} out of range ({nblobs} blobs)"
    elif len(c.digest) != DIGEST_SIZE:
        why = "digest is not 32 bytes"
    elif not 0 < c.uncompressed_size <= slot_size:
        why = f"uncompressed size {c.uncompressed_size} not in 1..{slot_size}"
    elif c.uncompressed_offset < 0 or c.uncompressed_offset % slot_size:
        why = f"uncompressed offset {c.uncompressed_offset} not a multiple of {slot_size}"
    elif c.compressed_offset < 0 or c.compressed_size <= 0:
        why = f"bad compressed range {c.compressed_offset}+{c.compressed_size}"
    elif not c.compressed and c.compressed_size != c.uncompressed_size:
        why = "raw chunk with compressed size != uncompressed size"
    if why:
        raise ImageError(f"chunk {index}: {why}")


def check_chunk_in_blob(index: int, c: ChunkRecord, blob: BlobRecord) -> None:
    if c.uncompressed_offset + c.uncompressed_size > blob.uncompressed_size:
        raise ImageError(f"chunk {index}: data ends past blob {blob.digest}'s uncompressed size")
    if c.compressed_offset + c.compressed_size > blob.compressed_size:
        raise ImageError(f"chunk {index}: stored range ends past blob {blob.digest}'s size")


_tls = threading.local()


# A chunk never needs a window larger than itself: refuse frames asking for more memory
# (zstd allows 128 MiB by default) instead of allocating it for untrusted bytes.
MAX_WINDOW = 2 * MAX_CHUNK_SIZE


def _dctx() -> zstandard.ZstdDecompressor:
    # A decompression context is not thread-safe; one per thread, reused.
    d = getattr(_tls, "dctx", None)
    if d is None:
        d = _tls.dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    return d


def chunk_digest(data: bytes | memoryview) -> bytes:
    return blake3.blake3(data).digest()


def decode_chunk(c: ChunkRecord, stored: bytes | memoryview) -> bytes:
    """Decompress (if needed) and verify one chunk's stored bytes; BadChunk otherwise.

    zstd gets the exact expected size as its limit: a frame that declares or produces any
    other size is refused before more than that much memory is spent on it.
    """
    size = c.uncompressed_size
    if len(stored) != c.compressed_size:
        raise BadChunk(f"stored size {len(stored)} != {c.compressed_size}")
    if c.compressed:
        try:
            declared = zstandard.frame_content_size(stored)
            if declared not in (-1, size):
                raise BadChunk(f"zstd frame declares {declared} bytes, want {size}")
            data = _dctx().decompress(stored, max_output_size=size, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise BadChunk(f"zstd: {exc}") from None
        if len(data) != size:
            raise BadChunk(f"decompressed to {len(data)} bytes, want {size}")
    else:
        data = bytes(stored)
    if chunk_digest(data) != c.digest:
        raise BadChunk("blake3 digest mismatch")
    return data
