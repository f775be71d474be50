"""Fixed-size chunking: blake3 digest, zero detection, dedup and zstd, on a thread pool.

The reading thread cuts files into ``chunk_size`` pieces and submits them; workers hash
and compress (blake3 and zstd release the GIL, so both cores work); results are taken
back strictly in submission order, so the spool (and so the blob) is the same bytes
whatever the scheduling.

Holes: a chunk that is entirely zero is not stored at all — the file simply has no chunk
at that offset, and readers return zeros there. The tar's sparse map is only used to skip
reading chunks that lie wholly in a hole. This makes the representation canonical: the
same file content gives the same chunk list whether or not the tar marked it sparse.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable, Container
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import blake3
import zstandard

from .blobwriter import Spool
from .entries import Content

WorkResult = tuple[bytes | None, bytes | None, bool]  # digest (None: zeros), payload, compressed


@dataclass(slots=True)
class Slot:
    """A chunk position in a file; ``digest`` is set when the chunk is done (None: hole)."""

    file_offset: int
    size: int
    digest: bytes | None = None


@dataclass(slots=True)
class Stats:
    files: int = 0
    input_bytes: int = 0  # file bytes seen in all layers (before whiteouts)
    hole_bytes: int = 0  # bytes in all-zero / sparse chunks
    chunks: int = 0  # chunk slots with data
    dedup_bytes: int = 0  # bytes of chunks already stored in this image
    dict_bytes: int = 0  # bytes of chunks found in a chunk dict
    spooled_raw: int = 0  # uncompressed bytes of newly stored chunks
    spooled: int = 0  # stored (compressed) bytes


class ChunkPipeline:
    def __init__(
        self,
        chunk_size: int,
        level: int,
        spool: Spool,
        known: Container[bytes],
        workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.chunk_size = chunk_size
        self.level = level
        self.spool = spool
        self.known = known  # digests of a chunk dict: referenced, never stored again
        self.stats = Stats()
        self._workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="chunker")
        self._inflight: collections.deque[tuple[Slot, Future[WorkResult]]] = collections.deque()
        self._local = threading.local()
        self._zero_digest = blake3.blake3(bytes(chunk_size)).digest()
        self._progress = progress

    def add_file(
        self, f: Content, size: int, data_ranges: list[tuple[int, int]] | None
    ) -> list[Slot]:
        self.stats.files += 1
        self.stats.input_bytes += size
        slots = []
        ranges = data_ranges
        ri = 0
        pos = 0
        for off in range(0, size, self.chunk_size):
            n = min(self.chunk_size, size - off)
            slot = Slot(off, n)
            slots.append(slot)
            if ranges is not None:
                while ri < len(ranges) and ranges[ri][0] + ranges[ri][1] <= off:
                    ri += 1
                if ri == len(ranges) or ranges[ri][0] >= off + n:  # wholly in a hole
                    self.stats.hole_bytes += n
                    continue
            if pos != off:
                f.seek(off)
            data = f.read(n)
            pos = off + len(data)
            if len(data) != n:
                from ..errors import ImageError

                raise ImageError(f"file data ends early ({off + len(data)} of {size} bytes)")
            self._inflight.append((slot, self._pool.submit(self._work, data)))
            if self._progress is not None:
                self._progress(n)
            self._drain(self._workers * 4)
        return slots

    def finish(self) -> Stats:
        self._drain(0)
        self._pool.shutdown()
        return self.stats

    def abort(self) -> None:
        for _, fut in self._inflight:
            fut.cancel()
        self._inflight.clear()
        self._pool.shutdown(wait=True)

    def _drain(self, limit: int) -> None:
        st = self.stats
        while len(self._inflight) > limit:
            slot, fut = self._inflight.popleft()
            digest, payload, compressed = fut.result()
            if digest is None:
                st.hole_bytes += slot.size
                continue
            slot.digest = digest
            st.chunks += 1
            if digest in self.known:
                st.dict_bytes += slot.size
            elif digest in self.spool:
                st.dedup_bytes += slot.size
            else:
                assert payload is not None
                self.spool.append(digest, payload, compressed, slot.size)
                st.spooled_raw += slot.size
                st.spooled += len(payload)

    def _work(self, data: bytes) -> WorkResult:
        n = len(data)
        digest = blake3.blake3(data).digest()
        if (digest == self._zero_digest) if n == self.chunk_size else data.count(0) == n:
            return None, None, False
        if digest in self.known or digest in self.spool:
            return digest, None, False  # stored already: no need to compress
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = zstandard.ZstdCompressor(
                level=self.level, write_checksum=False, write_content_size=True
            )
        comp: bytes = cctx.compress(data)
        if len(comp) < n:
            return digest, comp, True
        return digest, data, False
