"""The chunk store: makes a chunk present in the cache and verified, then serves it.

Flow per chunk (docs/storage.md): verified this lifetime → serve from the cache file;
present but unverified → hash the cached bytes (drop them on a mismatch); absent → read
its stored bytes from a backend (adjacent chunks of a blob merged into one read), decode and
verify, write at its uncompressed offset, set the present and verified bits. Bad bytes are
re-fetched, other sources first; after ``max_attempts`` the request fails with a log line
naming blob, chunk and source. Unverified bytes are never returned.

Concurrent requests for one chunk share one fetch: the first claims it with a
``concurrent.futures.Future`` that later callers (from any thread or event loop) wait on.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from ..errors import BackendError, ImageError, LocalError
from .backend import Backend
from .cache import BlobCache, CacheDir
from .chunks import (
    BadChunk,
    BlobRecord,
    BootstrapChunks,
    BootstrapLike,
    ChunkRecord,
    ChunkTable,
    check_chunk,
    check_chunk_in_blob,
    chunk_digest,
    decode_chunk,
)
from .plan import DEFAULT_MERGE_LIMIT, FetchRange, plan_ranges

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class StoreMetrics:
    """Plain counters for the daemon to export (approximate under heavy threading)."""

    hits: int = 0  # requests for chunks already verified this lifetime
    cache_verified: int = 0  # cached chunks checked and accepted this lifetime
    cache_corrupt: int = 0  # cached chunks that failed their digest and were dropped
    misses: int = 0  # chunks that had to come from a backend
    coalesced: int = 0  # requests that waited for a fetch another request started
    backend_reads: int = 0  # range reads issued (after merging)
    bytes_fetched: int = 0  # stored bytes read from backends
    verify_failures: int = 0  # fetched chunks whose bytes did not decode/verify
    refetches: int = 0  # retry rounds for a range (after bad data or a failed source)
    errors: int = 0  # chunks given up on (EIO)


class ChunkStore:
    """Chunk bytes of one image, by index into its chunk table. Implements ``ChunkSource``."""

    def __init__(
        self,
        chunks: ChunkTable,
        blobs: Sequence[BlobRecord],
        backends: Sequence[Backend],
        cache: CacheDir | str | os.PathLike[str],
        *,
        slot_size: int,
        max_attempts: int = 3,
        merge_limit: int = DEFAULT_MERGE_LIMIT,
        max_concurrent_reads: int = 8,
        executor: Executor | None = None,
    ) -> None:
        if not backends:
            raise LocalError("a chunk store needs at least one backend")
        self.chunks = chunks
        self.blobs = blobs
        self.backends = list(backends)
        self._own_cache = not isinstance(cache, CacheDir)
        self.cache = cache if isinstance(cache, CacheDir) else CacheDir(cache)
        self.slot_size = slot_size
        self.max_attempts = max(max_attempts, len(self.backends), 1)
        self.merge_limit = merge_limit
        self._max_reads = max_concurrent_reads
        self._read_slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="chunk-cpu"
        )
        self.metrics = StoreMetrics()
        self._caches: list[BlobCache | None] = [None] * len(blobs)
        self._inflight: dict[int, Future[None]] = {}
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_bootstrap(
        cls,
        bs: BootstrapLike,
        backends: Sequence[Backend],
        cache: CacheDir | str | os.PathLike[str],
        **kw: Any,
    ) -> ChunkStore:
        """The store of a mapped bootstrap (``format.reader.Bootstrap``); slots = chunk size."""
        return cls(BootstrapChunks(bs), bs.blobs, backends, cache, slot_size=bs.chunk_size, **kw)

    # -- public API -------------------------------------------------------------------------
    def read_chunk(self, chunk_index: int) -> bytes:
        """A chunk's verified bytes, on the caller's thread (FUSE Python path, tools)."""
        c, bc, slot = self._lookup(chunk_index)
        if bc.is_verified(slot):
            self.metrics.hits += 1
        else:
            self.ensure_range([chunk_index])
        return self._read_cached(chunk_index, c, bc)

    def ensure_range(self, indices: Iterable[int]) -> None:
        """Blocking: make every chunk present and verified (merged fetches) or raise."""
        # On a thread running an event loop, waiting for a fetch owned by a task of that
        # loop would deadlock: fetch such chunks again instead (same verified bytes).
        can_wait = _running_loop() is None
        owned, waits = self._claim(indices, can_wait)
        if owned:
            self._settle_sync(owned)
        for fut in [*owned.values(), *waits]:
            fut.result()

    async def ensure_chunks(self, indices: Iterable[int]) -> None:
        """Async ``ensure_range`` for the event loop: I/O awaited, CPU work in a pool."""
        owned, waits = self._claim(indices, True)
        if owned:
            # Shielded: a cancelled requester must not cancel a fetch others wait on.
            task = asyncio.get_running_loop().create_task(self._settle_async(owned))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.shield(task)
        for fut in [*owned.values(), *waits]:
            await asyncio.wrap_future(fut)

    async def aread_chunk(self, chunk_index: int) -> bytes:
        c, bc, slot = self._lookup(chunk_index)
        if bc.is_verified(slot):
            self.metrics.hits += 1
        else:
            await self.ensure_chunks([chunk_index])
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._read_cached, chunk_index, c, bc)

    def scrub(self, indices: Iterable[int] | None = None) -> list[int]:
        """On demand: re-hash cached chunks now, drop those that no longer match.

        Blocking (run it in a worker). Chunks being fetched are skipped. Returns the
        dropped chunk indices; they are fetched again on their next use.
        """
        bad = []
        for i in range(len(self.chunks)) if indices is None else indices:
            c, bc, slot = self._lookup(i)
            with self._lock:
                if i in self._inflight or not bc.is_present(slot):
                    continue
            data = bc.read(c.uncompressed_offset, c.uncompressed_size)
            if len(data) == c.uncompressed_size and chunk_digest(data) == c.digest:
                bc.mark_verified(slot)
                continue
            bc.drop(slot)
            self.metrics.cache_corrupt += 1
            log.warning("cached chunk failed a scrub; dropped", blob=bc.digest, chunk=i)
            bad.append(i)
        return bad

    def cache_location(self, chunk_index: int) -> tuple[int, int, int] | None:
        """(fd, offset, size) of a chunk's verified bytes in its cache file, else None.

        For the C fast path: valid while the store is open; verified bytes never move.
        """
        c, bc, slot = self._lookup(chunk_index)
        if not bc.is_verified(slot):
            return None
        return bc.fd, c.uncompressed_offset, c.uncompressed_size

    def blob_cache(self, blob_index: int) -> BlobCache:
        """The cache of a blob (fd, bitmaps) for handing to C."""
        if not 0 <= blob_index < len(self.blobs):
            raise ImageError(f"blob index {blob_index} out of range ({len(self.blobs)} blobs)")
        bc = self._caches[blob_index]
        if bc is None:
            blob = self.blobs[blob_index]
            bc = self.cache.open(blob.digest, blob.uncompressed_size, self.slot_size)
            self._caches[blob_index] = bc
        return bc

    def close(self) -> None:
        if self._own_executor:
            self._executor.shutdown(wait=True)
        if self._own_cache:
            self.cache.close()

    # -- claiming and resolving ---------------------------------------------------------------
    def _lookup(self, i: int) -> tuple[ChunkRecord, BlobCache, int]:
        if not 0 <= i < len(self.chunks):
            raise ImageError(f"chunk index {i} out of range ({len(self.chunks)} chunks)")
        c = self.chunks[i]
        check_chunk(i, c, len(self.blobs), self.slot_size)
        check_chunk_in_blob(i, c, self.blobs[c.blob_index])
        return c, self.blob_cache(c.blob_index), c.uncompressed_offset // self.slot_size

    def _claim(
        self, indices: Iterable[int], can_wait: bool
    ) -> tuple[dict[int, Future[None]], list[Future[None]]]:
        """Split chunks into ours to settle and others' fetches to wait for."""
        owned: dict[int, Future[None]] = {}
        waits: list[Future[None]] = []
        # Look every chunk up first: a bad index must fail before anything is claimed.
        looked: list[tuple[int, BlobCache, int]] = []
        for i in dict.fromkeys(indices):
            _, bc, slot = self._lookup(i)
            looked.append((i, bc, slot))
        for i, bc, slot in looked:
            if bc.is_verified(slot):
                self.metrics.hits += 1
                continue
            with self._lock:
                other = self._inflight.get(i)
                if other is not None and can_wait:
                    waits.append(other)
                    self.metrics.coalesced += 1
                    continue
                fut: Future[None] = Future()
                if other is None:
                    self._inflight[i] = fut
                owned[i] = fut
        return owned, waits

    def _resolve(
        self,
        owned: dict[int, Future[None]],
        errors: dict[int, BaseException],
        fallback: BaseException | None,
    ) -> None:
        with self._lock:
            for i, fut in owned.items():
                if self._inflight.get(i) is fut:
                    del self._inflight[i]
        for i, fut in owned.items():
            err = errors.get(i)
            if err is None and not self._verified(i):
                err = fallback or LocalError(f"chunk {i} was not fetched")
            if err is None:
                fut.set_result(None)
            else:
                fut.set_exception(err)

    def _verified(self, i: int) -> bool:
        _, bc, slot = self._lookup(i)
        return bc.is_verified(slot)

    # -- settling: sync and async drivers of the same steps -------------------------------------
    def _settle_sync(self, owned: dict[int, Future[None]]) -> None:
        errors: dict[int, BaseException] = {}
        fallback: BaseException | None = None
        try:
            for r in self._plan(self._check_cached(list(owned))):
                job = _Job(self, r)
                while (step := job.next()) is not None:
                    backend, ranges = step
                    for rr in ranges:
                        try:
                            data = self._read_sync(backend, rr)
                        except BackendError as exc:
                            job.read_failed(backend, rr, exc)
                        else:
                            job.installed(backend, rr, self._install(backend, rr, data))
                job.finish(errors)
        except BaseException as exc:
            fallback = exc
            raise
        finally:
            self._resolve(owned, errors, fallback)

    async def _settle_async(self, owned: dict[int, Future[None]]) -> None:
        errors: dict[int, BaseException] = {}
        fallback: BaseException | None = None
        loop = asyncio.get_running_loop()
        try:
            missing = await loop.run_in_executor(self._executor, self._check_cached, list(owned))
            jobs = [self._fetch_async(_Job(self, r), errors) for r in self._plan(missing)]
            for res in await asyncio.gather(*jobs, return_exceptions=True):
                if isinstance(res, BaseException):
                    raise res
        except BaseException as exc:
            fallback = exc
            raise
        finally:
            self._resolve(owned, errors, fallback)

    async def _fetch_async(self, job: _Job, errors: dict[int, BaseException]) -> None:
        loop = asyncio.get_running_loop()
        if self._read_slots is None or self._read_slots[0] is not loop:
            self._read_slots = (loop, asyncio.Semaphore(self._max_reads))
        slots = self._read_slots[1]
        while (step := job.next()) is not None:
            backend, ranges = step
            for rr in ranges:
                try:
                    async with slots:
                        data = await self._read_async(backend, rr)
                except BackendError as exc:
                    job.read_failed(backend, rr, exc)
                else:
                    bad = await loop.run_in_executor(
                        self._executor, self._install, backend, rr, data
                    )
                    job.installed(backend, rr, bad)
        job.finish(errors)

    # -- the steps ------------------------------------------------------------------------------
    def _plan(self, missing: list[int]) -> list[FetchRange]:
        self.metrics.misses += len(missing)
        return plan_ranges(missing, self.chunks, self.merge_limit)

    def _check_cached(self, indices: list[int]) -> list[int]:
        """Verify chunks the cache says it holds; return those that must be fetched."""
        missing = []
        for i in indices:
            c, bc, slot = self._lookup(i)
            if bc.is_verified(slot):
                continue
            if bc.is_present(slot):
                data = bc.read(c.uncompressed_offset, c.uncompressed_size)
                if len(data) == c.uncompressed_size and chunk_digest(data) == c.digest:
                    bc.mark_verified(slot)
                    self.metrics.cache_verified += 1
                    continue
                bc.drop(slot)
                self.metrics.cache_corrupt += 1
                log.warning("cached chunk failed verification; refetching", blob=bc.digest, chunk=i)
            missing.append(i)
        return missing

    def _read_sync(self, backend: Backend, rr: FetchRange) -> bytes:
        self.metrics.backend_reads += 1
        data = backend.read_sync(self.blobs[rr.blob_index].digest, rr.offset, rr.size)
        self.metrics.bytes_fetched += len(data)
        return data

    async def _read_async(self, backend: Backend, rr: FetchRange) -> bytes:
        self.metrics.backend_reads += 1
        data = await backend.read(self.blobs[rr.blob_index].digest, rr.offset, rr.size)
        self.metrics.bytes_fetched += len(data)
        return data

    def _install(self, backend: Backend, rr: FetchRange, data: bytes) -> dict[int, str]:
        """Decode, verify and cache each chunk of a range read; return the bad ones."""
        view = memoryview(data)
        bad: dict[int, str] = {}
        for i in rr.chunks:
            c, bc, slot = self._lookup(i)
            start = c.compressed_offset - rr.offset
            try:
                plain = decode_chunk(c, view[start : start + c.compressed_size])
            except BadChunk as exc:
                bad[i] = str(exc)
                self.metrics.verify_failures += 1
                log.warning(
                    "fetched chunk is bad",
                    blob=bc.digest,
                    chunk=i,
                    source=backend.name,
                    reason=str(exc),
                )
                continue
            try:
                bc.write(c.uncompressed_offset, plain)
            except OSError as exc:
                raise LocalError(f"cannot write cache of blob {bc.digest}: {exc}") from None
            bc.mark_verified(slot)
        return bad

    def _read_cached(self, i: int, c: ChunkRecord, bc: BlobCache) -> bytes:
        data = bc.read(c.uncompressed_offset, c.uncompressed_size)
        if len(data) != c.uncompressed_size:
            # Only someone truncating our cache file behind our back gets here.
            raise LocalError(f"cache file of blob {bc.digest} shrank under chunk {i}")
        return data


class _Job:
    """The attempts at fetching one planned range: which source next, what is still bad."""

    def __init__(self, store: ChunkStore, r: FetchRange) -> None:
        self.store = store
        self.blob = store.blobs[r.blob_index].digest
        self.pending = set(r.chunks)
        self.attempt = 0
        self.why: dict[int, tuple[str, str, bool]] = {}  # chunk -> (source, reason, bad data)

    def next(self) -> tuple[Backend, list[FetchRange]] | None:
        s = self.store
        if not self.pending or self.attempt >= s.max_attempts:
            return None
        backend = s.backends[self.attempt % len(s.backends)]
        if self.attempt:
            s.metrics.refetches += 1
        self.attempt += 1
        return backend, plan_ranges(self.pending, s.chunks, s.merge_limit)

    def read_failed(self, backend: Backend, rr: FetchRange, exc: BackendError) -> None:
        for i in rr.chunks:
            self.why[i] = (backend.name, str(exc), False)

    def installed(self, backend: Backend, rr: FetchRange, bad: dict[int, str]) -> None:
        for i in rr.chunks:
            if i in bad:
                self.why[i] = (backend.name, bad[i], True)
            else:
                self.pending.discard(i)

    def finish(self, errors: dict[int, BaseException]) -> None:
        for i in sorted(self.pending):
            source, reason, bad_data = self.why.get(i, ("-", "not attempted", False))
            self.store.metrics.errors += 1
            log.error(
                "chunk unavailable",
                blob=self.blob,
                chunk=i,
                source=source,
                reason=reason,
                attempts=self.attempt,
            )
            msg = f"blob {self.blob} chunk {i}: {reason} (from {source}, {self.attempt} attempts)"
            errors[i] = ImageError(msg) if bad_data else BackendError(msg)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
