"""The read-only image file system: a bootstrap's tree served over FUSE.

Metadata comes from the mapped bootstrap; file data comes chunk by chunk from a
``ChunkSource`` (the storage layer: backend -> verify -> cache).
"""

from __future__ import annotations

from typing import Protocol


class ChunkSource(Protocol):
    """Where chunk data comes from. The storage layer implements it.

    ``read_chunk`` returns the chunk's *uncompressed* bytes, already checked against the
    digest the bootstrap pins (never unverified bytes), exactly ``uncompressed_size`` long.
    It raises ``ImageError`` or ``BackendError`` (errors.py) when it cannot; the file
    system turns that into EIO with a log line naming the blob and chunk.
    It may block (fetch from a backend): the daemon runs FUSE requests in worker threads.
    """

    def read_chunk(self, chunk_index: int) -> bytes: ...
