"""decode_chunk: exactly the pinned bytes or BadChunk, whatever the stored bytes are."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import blake3
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.storage.blobs import SLOT, write_blob
from tests.storage.conftest import CountingBackend
from virtiofsd_nydus.errors import ImageError
from virtiofsd_nydus.format.model import Blob, Chunk
from virtiofsd_nydus.storage.chunks import BadChunk, decode_chunk
from virtiofsd_nydus.storage.fetcher import ChunkStore

PLAIN = b"hello chunk " * 1000


def _chunk(stored: bytes, plain: bytes = PLAIN, compressed: bool = True) -> Chunk:
    return Chunk(
        digest=blake3.blake3(plain).digest(),
        blob_index=0,
        compressed_offset=0,
        compressed_size=len(stored),
        uncompressed_offset=0,
        uncompressed_size=len(plain),
        compressed=compressed,
    )


def _zstd(data: bytes, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=content_size).compress(data)


def _huge_window(data: bytes) -> bytes:
    cobj = zstandard.ZstdCompressor(level=22, write_content_size=False).compressobj()
    return cobj.compress(data) + cobj.flush()


def test_good_frames_decode() -> None:
    for stored in (_zstd(PLAIN), _zstd(PLAIN, content_size=False)):
        assert decode_chunk(_chunk(stored), stored) == PLAIN
    assert decode_chunk(_chunk(PLAIN, compressed=False), PLAIN) == PLAIN


def test_bombs_and_size_lies_are_refused() -> None:
    big = PLAIN + b"\0" * (4 << 20)
    c = _chunk(b"", PLAIN)  # expects len(PLAIN) bytes with PLAIN's digest
    for stored in (
        _zstd(big),  # declares 64 MiB more than expected
        _zstd(big, content_size=False),  # produces more than expected
        _zstd(PLAIN[:-1]),  # declares one byte less
        _zstd(PLAIN[:-1], content_size=False),  # produces one byte less
        _zstd(PLAIN) + b"\0",  # trailing garbage
        _zstd(PLAIN) + _zstd(PLAIN),  # a second frame
        _zstd(PLAIN)[:-3],  # truncated frame
        b"\x28\xb5\x2f\xfd" + b"\xff" * 20,  # a magic number and garbage
        _huge_window(PLAIN),  # asks for a 128 MiB window to decode 12 KB
    ):
        with pytest.raises(BadChunk):
            decode_chunk(replace(c, compressed_size=len(stored)), stored)


def test_right_size_wrong_bytes_is_refused() -> None:
    other = PLAIN.replace(b"hello", b"jello")
    stored = _zstd(other)
    with pytest.raises(BadChunk, match="digest"):
        decode_chunk(_chunk(stored), stored)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_decode_to_something_else(stored: bytes) -> None:
    c = _chunk(stored)
    try:
        out = decode_chunk(c, stored)
    except BadChunk:
        return
    assert out == PLAIN


def test_store_refuses_a_bomb_chunk(tmp_path: Path) -> None:
    """Through the whole store: a bomb is an ImageError and nothing reaches the cache."""
    bomb = _zstd(b"\0" * (SLOT * 16))
    plain = b"\0" * SLOT
    digest = write_blob(tmp_path / "blobs", [bomb])
    chunk = Chunk(blake3.blake3(plain).digest(), 0, 0, len(bomb), 0, SLOT, True)
    backend = CountingBackend(tmp_path / "blobs")
    store = ChunkStore(
        [chunk], [Blob(digest, len(bomb), SLOT)], [backend], tmp_path / "c", slot_size=SLOT
    )
    try:
        with pytest.raises(ImageError, match="declares"):
            store.read_chunk(0)
        assert store.cache_location(0) is None
        assert store.metrics.verify_failures == 3
    finally:
        store.close()
        backend.close()
