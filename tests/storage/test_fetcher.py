"""The chunk store end to end over real blobs, a real localfs backend and a real cache."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import structlog

from tests.storage.blobs import SLOT, BuiltImage, flip_byte
from tests.storage.conftest import CountingBackend, StoreFactory
from virtiofsd_nydus.errors import BackendError, ImageError
from virtiofsd_nydus.storage.cache import HEADER_SIZE


def test_reads_every_chunk(image: BuiltImage, make_store: StoreFactory) -> None:
    kinds = {c.compressed for c in image.chunks}
    assert kinds == {True, False}, "fixture must hold both zstd and raw chunks"
    store = make_store()
    for i, want in enumerate(image.data):
        assert store.read_chunk(i) == want
    assert store.metrics.misses == len(image.data)
    for i, want in enumerate(image.data):
        assert store.read_chunk(i) == want
    assert store.metrics.hits == len(image.data)
    assert store.metrics.bytes_fetched == sum(b.compressed_size for b in image.blobs)


def test_async_path_merges_and_reads(image: BuiltImage, make_store: StoreFactory) -> None:
    backend = CountingBackend(image.blob_dir)
    store = make_store(backend)

    async def run() -> list[bytes]:
        await store.ensure_chunks(range(len(image.chunks)))
        return [await store.aread_chunk(i) for i in range(len(image.chunks))]

    assert asyncio.run(run()) == image.data
    # every blob's chunks are stored back to back: one read per blob
    assert sorted(backend.reads) == sorted((b.digest, 0, b.compressed_size) for b in image.blobs)


def test_adjacent_chunks_merge_into_one_read(image: BuiltImage, make_store: StoreFactory) -> None:
    backend = CountingBackend(image.blob_dir)
    store = make_store(backend)
    store.ensure_range([1, 2, 3])  # adjacent in blob 0
    c1, c3 = image.chunks[1], image.chunks[3]
    start, end = c1.compressed_offset, c3.compressed_offset + c3.compressed_size
    assert backend.reads == [(image.blobs[0].digest, start, end - start)]
    store.ensure_range([0, 4])  # not adjacent to each other: two reads
    assert len(backend.reads) == 3
    assert [store.read_chunk(i) for i in range(5)] == image.data[:5]
    assert len(backend.reads) == 3


def test_merge_limit_splits_reads(image: BuiltImage, make_store: StoreFactory) -> None:
    backend = CountingBackend(image.blob_dir)
    store = make_store(backend, merge_limit=1)
    store.ensure_range(range(5))
    assert len(backend.reads) == 5


def test_restart_reuses_cache_and_verifies_once(
    image: BuiltImage, make_store: StoreFactory
) -> None:
    first = make_store()
    for i in range(len(image.chunks)):
        first.read_chunk(i)
    first.close()

    backend = CountingBackend(image.blob_dir)
    second = make_store(backend)
    for i, want in enumerate(image.data):
        assert second.read_chunk(i) == want
    assert backend.reads == []
    assert second.metrics.cache_verified == len(image.data)
    for i, want in enumerate(image.data):
        assert second.read_chunk(i) == want
    assert second.metrics.cache_verified == len(image.data)  # not re-hashed
    assert second.metrics.hits == len(image.data)


def test_corrupt_cache_is_detected_and_refetched(
    image: BuiltImage, make_store: StoreFactory, tmp_path: Path
) -> None:
    first = make_store()
    first.ensure_range(range(len(image.chunks)))
    data_file = first.cache.data_path(image.blobs[0].digest)
    first.close()
    flip_byte(data_file, 2 * SLOT + 100)  # inside chunk 2

    backend = CountingBackend(image.blob_dir)
    second = make_store(backend)
    with structlog.testing.capture_logs() as logs:
        assert second.read_chunk(2) == image.data[2]
    c2 = image.chunks[2]
    assert backend.reads == [(image.blobs[0].digest, c2.compressed_offset, c2.compressed_size)]
    assert second.metrics.cache_corrupt == 1
    assert any(e["event"].startswith("cached chunk failed") and e["chunk"] == 2 for e in logs)
    # repaired on disk: a third lifetime verifies it from the cache
    second.close()
    third_backend = CountingBackend(image.blob_dir)
    third = make_store(third_backend)
    assert third.read_chunk(2) == image.data[2]
    assert third_backend.reads == []


def _bad_copy(image: BuiltImage, dest: Path, chunk: int) -> Path:
    """A copy of the image's blob dir where one chunk's stored bytes are flipped."""
    shutil.copytree(image.blob_dir, dest)
    c = image.chunks[chunk]
    path = dest / "sha256" / image.blobs[c.blob_index].digest.removeprefix("sha256:")
    flip_byte(path, c.compressed_offset + c.compressed_size // 2)
    return dest


@pytest.mark.parametrize("chunk", [0, 1])  # a zstd chunk and a raw one
def test_bad_blob_is_an_error_naming_blob_chunk_source(
    image: BuiltImage, make_store: StoreFactory, tmp_path: Path, chunk: int
) -> None:
    bad = CountingBackend(_bad_copy(image, tmp_path / "bad", chunk))
    store = make_store(bad)
    blob = image.blobs[image.chunks[chunk].blob_index].digest
    with structlog.testing.capture_logs() as logs, pytest.raises(ImageError) as err:
        store.read_chunk(chunk)
    assert blob in str(err.value) and f"chunk {chunk}" in str(err.value)
    final = [e for e in logs if e["log_level"] == "error"]
    assert final and final[0]["blob"] == blob and final[0]["chunk"] == chunk
    assert final[0]["source"] == bad.name
    assert len(bad.reads) == 3  # retried up to max_attempts
    assert store.cache_location(chunk) is None
    assert not store.blob_cache(0).is_present(chunk)
    # the same request fails again, it never serves what it fetched
    with pytest.raises(ImageError):
        store.read_chunk(chunk)
    # its neighbours are fine
    other = 1 - chunk
    assert store.read_chunk(other) == image.data[other]


def test_bad_source_falls_back_to_a_good_one(
    image: BuiltImage, make_store: StoreFactory, tmp_path: Path
) -> None:
    bad = CountingBackend(_bad_copy(image, tmp_path / "bad", 3))
    good = CountingBackend(image.blob_dir)
    store = make_store(bad, good)
    assert asyncio.run(_read_all(store, range(5))) == image.data[:5]
    # one merged read from the bad source; only chunk 3 is read again, from the good one
    c3 = image.chunks[3]
    assert len(bad.reads) == 1
    assert good.reads == [(image.blobs[0].digest, c3.compressed_offset, c3.compressed_size)]
    assert store.metrics.verify_failures == 1 and store.metrics.refetches == 1


async def _read_all(store: object, indices: range) -> list[bytes]:
    from virtiofsd_nydus.storage.fetcher import ChunkStore

    assert isinstance(store, ChunkStore)
    await store.ensure_chunks(indices)
    return [await store.aread_chunk(i) for i in indices]


def test_transient_failures_are_retried(image: BuiltImage, make_store: StoreFactory) -> None:
    flaky = CountingBackend(image.blob_dir, fail_first=2)
    store = make_store(flaky)
    assert store.read_chunk(0) == image.data[0]
    assert len(flaky.reads) == 3


def test_a_dead_backend_is_a_backend_error(image: BuiltImage, make_store: StoreFactory) -> None:
    dead = CountingBackend(image.blob_dir, fail_first=1000)
    store = make_store(dead)
    with pytest.raises(BackendError, match=r"chunk 0"):
        store.read_chunk(0)
    with pytest.raises(BackendError):
        asyncio.run(store.ensure_chunks([1]))


def test_concurrent_async_requests_share_one_fetch(
    image: BuiltImage, make_store: StoreFactory
) -> None:
    backend = CountingBackend(image.blob_dir)
    store = make_store(backend)

    async def run() -> list[bytes]:
        return await asyncio.gather(*(store.aread_chunk(4) for _ in range(20)))

    assert asyncio.run(run()) == [image.data[4]] * 20
    assert len(backend.reads) == 1
    assert store.metrics.misses == 1


def test_concurrent_errors_reach_every_waiter(
    image: BuiltImage, make_store: StoreFactory, tmp_path: Path
) -> None:
    bad = CountingBackend(_bad_copy(image, tmp_path / "bad", 2))
    store = make_store(bad)

    async def run() -> list[object]:
        return await asyncio.gather(
            *(store.aread_chunk(2) for _ in range(5)), return_exceptions=True
        )

    results = asyncio.run(run())
    assert all(isinstance(r, ImageError) for r in results)
    assert len(bad.reads) == 3  # one fetch (with its retries), not five


def test_cache_location_points_at_verified_bytes(
    image: BuiltImage, make_store: StoreFactory
) -> None:
    store = make_store()
    assert store.cache_location(6) is None
    store.ensure_range([6])
    loc = store.cache_location(6)
    assert loc is not None
    fd, offset, size = loc
    assert offset == image.chunks[6].uncompressed_offset
    assert os.pread(fd, size, offset) == image.data[6]
    bc = store.blob_cache(1)
    slot = offset // SLOT
    assert bc.verified[slot >> 3] >> (slot & 7) & 1
    assert bc.present[HEADER_SIZE + (slot >> 3)] >> (slot & 7) & 1


def test_bad_chunk_records_are_image_errors(image: BuiltImage, tmp_path: Path) -> None:
    from dataclasses import replace

    from virtiofsd_nydus.storage.fetcher import ChunkStore

    c = image.chunks[0]
    bad = [
        replace(c, uncompressed_offset=c.uncompressed_offset + 1),  # not slot-aligned
        replace(c, uncompressed_size=SLOT + 1),  # larger than its slot
        replace(c, blob_index=7),
        replace(c, compressed_offset=image.blobs[0].compressed_size),  # past the blob
        replace(c, digest=b"short"),
    ]
    backend = CountingBackend(image.blob_dir)
    store = ChunkStore(bad, image.blobs, [backend], tmp_path / "c", slot_size=SLOT)
    try:
        for i in range(len(bad)):
            with pytest.raises(ImageError, match=f"chunk {i}"):
                store.read_chunk(i)
        with pytest.raises(ImageError, match="out of range"):
            store.read_chunk(len(bad))
    finally:
        store.close()
        backend.close()
    assert backend.reads == []


class GatedBackend(CountingBackend):
    """Holds every read until ``release`` is set (or ``auto_release`` reads have arrived)."""

    def __init__(self, blob_dir: Path, auto_release: int = 0) -> None:
        super().__init__(blob_dir)
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.auto_release = auto_release
        self._arrived = 0

    def try_read_sync(self, blob_digest: str, offset: int, size: int) -> bytes:
        self.entered.release()
        with self._count_lock:
            self._arrived += 1
            if self.auto_release and self._arrived >= self.auto_release:
                self.release.set()
        assert self.release.wait(60), "gate never opened"
        return super().try_read_sync(blob_digest, offset, size)


@pytest.mark.timeout(120)
def test_concurrent_threads_share_one_fetch(image: BuiltImage, make_store: StoreFactory) -> None:
    backend = GatedBackend(image.blob_dir)
    store = make_store(backend)
    with ThreadPoolExecutor(4) as pool:
        owner = pool.submit(store.read_chunk, 4)
        assert backend.entered.acquire(timeout=60)  # the owner is inside the backend
        others = [pool.submit(store.read_chunk, 4) for _ in range(3)]
        while store.metrics.coalesced < 3:  # all three are waiting on the owner's fetch
            assert not any(f.done() for f in others)
            threading.Event().wait(0.01)
        backend.release.set()
        assert [f.result() for f in [owner, *others]] == [image.data[4]] * 4
    assert len(backend.reads) == 1


@pytest.mark.timeout(120)
def test_blocking_read_on_the_loop_thread_does_not_deadlock(
    image: BuiltImage, make_store: StoreFactory
) -> None:
    """A blocking read on the loop's own thread can't wait for the loop's fetch: it fetches."""
    backend = GatedBackend(image.blob_dir, auto_release=2)
    store = make_store(backend)

    async def run() -> tuple[bytes, bytes]:
        task = asyncio.create_task(store.aread_chunk(4))
        await asyncio.sleep(0)  # the task claims chunk 4 and starts its fetch
        while not backend.entered.acquire(blocking=False):
            await asyncio.sleep(0.01)
        blocking = store.read_chunk(4)  # on the loop thread, while the task's fetch waits
        return blocking, await task

    assert asyncio.run(run()) == (image.data[4], image.data[4])
    assert len(backend.reads) == 2


@pytest.mark.timeout(60)  # a half-claimed batch would leave the next request waiting forever
def test_a_bad_index_in_a_batch_claims_nothing(image: BuiltImage, make_store: StoreFactory) -> None:
    store = make_store()
    with pytest.raises(ImageError, match="out of range"):
        store.ensure_range([0, 1, len(image.chunks)])
    with pytest.raises(ImageError, match="out of range"):
        asyncio.run(store.ensure_chunks([2, -1]))
    # nothing was left half-claimed: the same chunks fetch normally afterwards
    assert store.metrics.misses == 0
    store.ensure_range([0, 1, 2])
    assert [store.read_chunk(i) for i in range(3)] == image.data[:3]


def test_scrub_finds_a_cache_changed_under_a_running_store(
    image: BuiltImage, make_store: StoreFactory
) -> None:
    backend = CountingBackend(image.blob_dir)
    store = make_store(backend)
    store.ensure_range(range(len(image.chunks)))
    flip_byte(store.cache.data_path(image.blobs[1].digest), SLOT + 5)  # chunk 6
    assert store.scrub() == [6]
    assert store.cache_location(6) is None
    assert store.read_chunk(6) == image.data[6]
    assert store.scrub() == []
    assert len(backend.reads) == 2 + 1  # one per blob, then chunk 6 again


@pytest.mark.timeout(120)
def test_an_async_request_waits_for_a_threads_fetch(
    image: BuiltImage, make_store: StoreFactory
) -> None:
    backend = GatedBackend(image.blob_dir)
    store = make_store(backend)
    with ThreadPoolExecutor(1) as pool:
        owner = pool.submit(store.read_chunk, 5)
        assert backend.entered.acquire(timeout=60)

        async def waiter() -> bytes:
            task = asyncio.create_task(store.aread_chunk(5))
            while store.metrics.coalesced < 1:
                await asyncio.sleep(0.01)
            backend.release.set()
            return await task

        assert asyncio.run(waiter()) == image.data[5]
        assert owner.result() == image.data[5]
    assert len(backend.reads) == 1
