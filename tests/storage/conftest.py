"""Fixtures for storage tests: a real two-blob image and real localfs backends."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.storage.blobs import SLOT, BuiltImage, build_image, payloads
from virtiofsd_nydus.storage.backend import Backend, RetryPolicy
from virtiofsd_nydus.storage.fetcher import ChunkStore
from virtiofsd_nydus.storage.localfs import LocalFsBackend

NO_WAIT = RetryPolicy(attempts=3, timeout=10.0, backoff=0.0)


class CountingBackend(LocalFsBackend):
    """The real localfs backend, recording every range it is asked for."""

    def __init__(self, blob_dir: Path, fail_first: int = 0) -> None:
        super().__init__(blob_dir, retry=NO_WAIT)
        self.reads: list[tuple[str, int, int]] = []
        self.fail_first = fail_first  # the first N attempts fail with EIO
        self._count_lock = threading.Lock()

    def try_read_sync(self, blob_digest: str, offset: int, size: int) -> bytes:
        with self._count_lock:
            self.reads.append((blob_digest, offset, size))
            fail = len(self.reads) <= self.fail_first
        if fail:
            raise OSError(errno.EIO, "injected I/O error")
        return super().try_read_sync(blob_digest, offset, size)


@pytest.fixture
def image(tmp_path: Path) -> BuiltImage:
    return build_image(tmp_path / "image", [payloads(1, 5), payloads(2, 3)])


StoreFactory = Callable[..., ChunkStore]


@pytest.fixture
def make_store(image: BuiltImage, tmp_path: Path) -> Iterator[StoreFactory]:
    """make_store(*backends, **kw): a ChunkStore over the image with tmp_path/cache."""
    made: list[ChunkStore] = []
    backends: list[Backend] = []

    def make(*srcs: Backend, **kw: Any) -> ChunkStore:
        if not srcs:
            srcs = (CountingBackend(image.blob_dir),)
        backends.extend(srcs)
        kw.setdefault("slot_size", SLOT)
        store = ChunkStore(image.chunks, image.blobs, srcs, tmp_path / "cache", **kw)
        made.append(store)
        return store

    yield make
    for s in made:
        s.close()
    for b in backends:
        b.close()
