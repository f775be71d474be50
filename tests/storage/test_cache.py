"""The cache files are untrusted: anything odd about them means "start empty", never bad bytes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.storage.blobs import SLOT, BuiltImage
from tests.storage.conftest import CountingBackend, StoreFactory
from virtiofsd_nydus.storage.cache import HEADER_SIZE, CacheDir


def _truncate_map(m: Path, d: Path) -> None:
    os.truncate(m, HEADER_SIZE // 2)


def _garbage_header(m: Path, d: Path) -> None:
    raw = bytearray(m.read_bytes())
    raw[:8] = b"NOTAMAP!"
    m.write_bytes(bytes(raw))


def _wrong_slot_size(m: Path, d: Path) -> None:
    raw = bytearray(m.read_bytes())
    raw[12:16] = (SLOT * 2).to_bytes(4, "little")
    m.write_bytes(bytes(raw))


def _extra_bytes(m: Path, d: Path) -> None:
    m.write_bytes(m.read_bytes() + b"\xff" * 8)


def _empty_map(m: Path, d: Path) -> None:
    m.write_bytes(b"")


def _data_missing(m: Path, d: Path) -> None:
    d.unlink()


def _data_resized(m: Path, d: Path) -> None:
    os.truncate(d, 10)


def _map_is_a_symlink(m: Path, d: Path) -> None:
    target = m.with_suffix(".elsewhere")
    m.rename(target)
    m.symlink_to(target)


@pytest.mark.parametrize(
    "damage",
    [
        _truncate_map,
        _garbage_header,
        _wrong_slot_size,
        _extra_bytes,
        _empty_map,
        _data_missing,
        _data_resized,
        _map_is_a_symlink,
    ],
)
def test_damaged_cache_starts_empty(
    image: BuiltImage, make_store: StoreFactory, damage: Callable[[Path, Path], None]
) -> None:
    first = make_store()
    first.ensure_range(range(5))
    digest = image.blobs[0].digest
    m, d = first.cache.map_path(digest), first.cache.data_path(digest)
    first.close()
    damage(m, d)

    backend = CountingBackend(image.blob_dir)
    second = make_store(backend)
    assert [second.read_chunk(i) for i in range(5)] == image.data[:5]
    assert second.metrics.cache_verified == 0
    assert second.metrics.misses == 5
    assert not m.is_symlink() and m.stat().st_size == HEADER_SIZE + 1


def test_lying_bitmap_is_caught_by_verification(
    image: BuiltImage, make_store: StoreFactory
) -> None:
    """A well-formed map claiming every chunk over an empty data file: all re-fetched."""
    first = make_store()
    first.ensure_range([0])  # creates the files
    digest = image.blobs[0].digest
    m, d = first.cache.map_path(digest), first.cache.data_path(digest)
    first.close()
    raw = bytearray(m.read_bytes())
    raw[HEADER_SIZE:] = b"\xff" * (len(raw) - HEADER_SIZE)
    m.write_bytes(bytes(raw))
    os.truncate(d, 0)
    os.truncate(d, image.blobs[0].uncompressed_size)

    backend = CountingBackend(image.blob_dir)
    second = make_store(backend)
    assert [second.read_chunk(i) for i in range(5)] == image.data[:5]
    assert second.metrics.cache_corrupt == 5
    assert second.metrics.cache_verified == 0


def test_fresh_cache_files_have_their_sizes(image: BuiltImage, tmp_path: Path) -> None:
    cache = CacheDir(tmp_path / "c")
    blob = image.blobs[0]
    bc = cache.open(blob.digest, blob.uncompressed_size, SLOT)
    assert cache.data_path(blob.digest).stat().st_size == blob.uncompressed_size
    assert cache.map_path(blob.digest).stat().st_size == HEADER_SIZE + (bc.nslots + 7) // 8
    assert bc.nslots == 5
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "c").iterdir())
    assert cache.open(blob.digest, blob.uncompressed_size, SLOT) is bc  # one per process
    cache.close()


def test_present_bits_persist_and_drop_clears(image: BuiltImage, tmp_path: Path) -> None:
    blob = image.blobs[0]
    cache = CacheDir(tmp_path / "c")
    bc = cache.open(blob.digest, blob.uncompressed_size, SLOT)
    bc.write(3 * SLOT, b"x")
    bc.mark_verified(3)
    bc.mark_verified(4)
    bc.drop(4)
    cache.close()
    again = CacheDir(tmp_path / "c")
    bc = again.open(blob.digest, blob.uncompressed_size, SLOT)
    assert [bc.is_present(s) for s in range(5)] == [False, False, False, True, False]
    assert not any(bc.is_verified(s) for s in range(5))  # verified is per lifetime
    again.close()
