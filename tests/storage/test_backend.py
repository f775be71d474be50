"""The backend base (retries, timeouts, sync bridge), localfs, and read planning."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.storage.blobs import BuiltImage
from tests.storage.conftest import NO_WAIT
from virtiofsd_nydus.errors import BackendError, LocalError
from virtiofsd_nydus.storage.backend import Backend, RetryPolicy, TransientError
from virtiofsd_nydus.storage.localfs import LocalFsBackend
from virtiofsd_nydus.storage.plan import FetchRange, plan_ranges

DATA = bytes(range(256)) * 64
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


class MemoryBackend(Backend):
    """An async-only backend (like a future HTTP one): blobs held in a dict."""

    name = "memory"

    def __init__(self, retry: RetryPolicy, fail: int = 0, hang: bool = False) -> None:
        super().__init__(retry)
        self.blobs = {DIGEST: DATA}
        self.fail = fail
        self.hang = hang
        self.attempts = 0

    async def try_read(self, blob_digest: str, offset: int, size: int) -> bytes:
        self.attempts += 1
        if self.hang:
            await asyncio.Event().wait()  # never answers: only the timeout ends it
        if self.attempts <= self.fail:
            raise TransientError("503 from memory")
        return self.blobs[blob_digest][offset : offset + size]


def test_async_only_backend_works_from_blocking_code() -> None:
    b = MemoryBackend(NO_WAIT, fail=2)
    try:
        assert b.read_sync(DIGEST, 10, 100) == DATA[10:110]
        assert b.attempts == 3

        async def inside_a_loop() -> bytes:
            return b.read_sync(DIGEST, 0, 5)  # its own loop thread: no deadlock

        assert asyncio.run(inside_a_loop()) == DATA[:5]
    finally:
        b.close()


def test_timeouts_and_exhausted_retries() -> None:
    b = MemoryBackend(RetryPolicy(attempts=2, timeout=0.05, backoff=0.0), hang=True)
    with pytest.raises(BackendError, match="after 2 attempts"):
        asyncio.run(b.read(DIGEST, 0, 10))
    assert b.attempts == 2


def test_short_answer_is_an_error() -> None:
    b = MemoryBackend(NO_WAIT)
    with pytest.raises(BackendError, match="gave 6 bytes"):
        asyncio.run(b.read(DIGEST, len(DATA) - 6, 10))


def test_localfs_layouts(image: BuiltImage, tmp_path: Path) -> None:
    blob = image.blobs[0]
    want = image.blob_path(0).read_bytes()[5:105]
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / blob.digest.removeprefix("sha256:")).write_bytes(image.blob_path(0).read_bytes())
    for backend in (
        LocalFsBackend(image.blob_dir, retry=NO_WAIT),  # DIR/sha256/<hex>
        LocalFsBackend(flat, retry=NO_WAIT),  # DIR/<hex>
        LocalFsBackend(blob_file=image.blob_path(0), retry=NO_WAIT),
    ):
        try:
            assert backend.read_sync(blob.digest, 5, 100) == want
            assert asyncio.run(backend.read(blob.digest, 5, 100)) == want
        finally:
            backend.close()


def test_localfs_refuses_bad_names_missing_and_short(image: BuiltImage) -> None:
    b = LocalFsBackend(image.blob_dir, retry=NO_WAIT)
    try:
        for bad in ("sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64, ""):
            with pytest.raises(BackendError, match="not a sha256"):
                b.read_sync(bad, 0, 1)
        with pytest.raises(BackendError, match="no blob"):
            b.read_sync("sha256:" + "0" * 64, 0, 1)
        blob = image.blobs[0]
        with pytest.raises(BackendError, match="ends before"):
            b.read_sync(blob.digest, blob.compressed_size - 3, 10)
    finally:
        b.close()
    with pytest.raises(LocalError):
        LocalFsBackend()


class _C:
    def __init__(self, blob: int, off: int, size: int) -> None:
        self.blob_index, self.compressed_offset, self.compressed_size = blob, off, size


def test_plan_merges_back_to_back_chunks_only() -> None:
    cs = [_C(0, 0, 10), _C(0, 10, 5), _C(0, 20, 5), _C(1, 15, 5), _C(0, 25, 1), _C(1, 0, 15)]
    table = cs  # structural: plan_ranges reads only these three fields
    got = plan_ranges([4, 0, 1, 2, 3, 5, 1], table)  # type: ignore[arg-type]
    assert got == [
        FetchRange(0, 0, 15, (0, 1)),
        FetchRange(0, 20, 6, (2, 4)),
        FetchRange(1, 0, 20, (5, 3)),
    ]
    limited = plan_ranges([0, 1, 2, 4], table, merge_limit=10)  # type: ignore[arg-type]
    assert [r.chunks for r in limited] == [(0,), (1,), (2, 4)]


@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(1, 50), st.booleans()), max_size=40),
    st.integers(1, 200),
    st.data(),
)
def test_plan_covers_exactly_the_request(
    layout: list[tuple[int, int, bool]], limit: int, data: st.DataObject
) -> None:
    """Chunks laid out per blob with or without gaps: every read is contiguous, within the
    limit unless it is one chunk, and the reads cover each requested chunk exactly once."""
    ends = [0, 0, 0]
    table = []
    for blob, size, gap in layout:
        ends[blob] += 7 if gap else 0
        table.append(_C(blob, ends[blob], size))
        ends[blob] += size
    want = data.draw(st.lists(st.integers(0, len(table) - 1))) if table else []
    got = plan_ranges(want, table, merge_limit=limit)  # type: ignore[arg-type]
    assert sorted(i for r in got for i in r.chunks) == sorted(set(want))
    for r in got:
        pos = r.offset
        for i in r.chunks:
            c = table[i]
            assert (c.blob_index, c.compressed_offset) == (r.blob_index, pos)
            pos += c.compressed_size
        assert pos == r.offset + r.size
        assert r.size <= limit or len(r.chunks) == 1
