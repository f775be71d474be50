"""The real pipeline: ``vnydus convert`` output, mapped bootstrap, localfs blobs, chunk store."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from virtiofsd_nydus.convert.convert import Options, convert
from virtiofsd_nydus.convert.imagedir import ImageDir
from virtiofsd_nydus.format.reader import Bootstrap
from virtiofsd_nydus.storage import ChunkStore, LocalFsBackend

CHUNK = 16 << 10


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[bytes, bytes]]:
    root = tmp_path_factory.mktemp("conv")
    src = root / "src"
    src.mkdir()
    rnd = random.Random(7)
    files = {
        b"/empty": b"",
        b"/small": b"tiny file\n",
        b"/text": b"all work and no play\n" * 3000,  # compressible, short last chunk
        b"/random": rnd.randbytes(3 * CHUNK + 123),  # stored raw
        b"/dup": b"all work and no play\n" * 3000,  # deduplicated against /text
    }
    for name, data in files.items():
        (src / name.decode().lstrip("/")).write_bytes(data)
    convert(f"dir:{src}", root / "image", Options(chunk_size=CHUNK, progress=False))
    return root / "image", files


def _file_bytes(bs: Bootstrap, store: ChunkStore, ino: int) -> bytes:
    size = bs.inode(ino).size
    out = bytearray(size)  # holes stay zero
    for file_offset, chunk_index in bs.file_chunks(ino):
        data = store.read_chunk(chunk_index)
        out[file_offset : file_offset + len(data)] = data
    return bytes(out)


def test_every_file_reads_back(converted: tuple[Path, dict[bytes, bytes]], tmp_path: Path) -> None:
    image_path, files = converted
    img = ImageDir(image_path)
    with img.open_bootstrap() as bs:
        backend = LocalFsBackend(img.blob_dir)
        store = ChunkStore.from_bootstrap(bs, [backend], tmp_path / "cache")
        try:
            for path, want in files.items():
                ino = bs.resolve(path)
                assert ino is not None, path
                assert _file_bytes(bs, store, ino) == want, path
            assert store.metrics.misses == bs.chunk_count  # each unique chunk fetched once
        finally:
            store.close()
            backend.close()


def test_whole_image_prefetch_is_one_read_per_blob(
    converted: tuple[Path, dict[bytes, bytes]], tmp_path: Path
) -> None:
    image_path, _ = converted
    img = ImageDir(image_path)
    with img.open_bootstrap() as bs:
        backend = LocalFsBackend(img.blob_dir)
        store = ChunkStore.from_bootstrap(bs, [backend], tmp_path / "cache")
        try:
            asyncio.run(store.ensure_chunks(range(bs.chunk_count)))
            assert store.metrics.backend_reads == len(bs.blobs)
            assert store.metrics.bytes_fetched == sum(b.compressed_size for b in bs.blobs)
            assert all(store.cache_location(i) is not None for i in range(bs.chunk_count))
        finally:
            store.close()
            backend.close()
