"""``--chunk-dict``: chunks of earlier images, referenced instead of stored again."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError
from ..format.model import Blob, Chunk
from .imagedir import ImageDir


@dataclass(frozen=True, slots=True)
class DictChunk:
    blob: Blob
    blob_path: Path
    chunk: Chunk  # blob_index is the dict image's; remapped on use


class ChunkDict:
    def __init__(self) -> None:
        self.chunks: dict[bytes, DictChunk] = {}

    def __contains__(self, digest: object) -> bool:
        return digest in self.chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def add_image(self, path: str | Path, chunk_size: int) -> None:
        img = ImageDir(path)
        with img.open_bootstrap() as bs:
            if bs.chunk_size != chunk_size:
                raise ImageError(
                    f"chunk dict {path}: chunk size {bs.chunk_size} differs from {chunk_size}"
                )
            blobs = []
            for b in bs.blobs:
                p = img.blob_path(b.digest)
                if not p.is_file():
                    raise ImageError(f"chunk dict {path}: blob {b.digest} missing")
                blobs.append(
                    (Blob(b.digest, b.compressed_size, b.uncompressed_size, b.compression), p)
                )
            for i in range(bs.chunk_count):
                c = bs.chunk(i)
                if c.digest in self.chunks:
                    continue
                blob, p = blobs[c.blob_index]
                chunk = Chunk(
                    c.digest,
                    c.blob_index,
                    c.compressed_offset,
                    c.compressed_size,
                    c.uncompressed_offset,
                    c.uncompressed_size,
                    c.compressed,
                )
                self.chunks[c.digest] = DictChunk(blob, p, chunk)


def load_chunk_dicts(paths: Iterable[str | Path], chunk_size: int) -> ChunkDict:
    d = ChunkDict()
    for p in paths:
        d.add_image(p, chunk_size)
    return d
