"""The final tree + stored chunks → the image model (and which blob files it needs)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..format.model import Blob, Chunk, FileChunk, Image, Node
from .blobwriter import Spool
from .chunkdict import ChunkDict
from .chunker import Slot


@dataclass
class Assembled:
    image: Image
    blob_files: list[tuple[Blob, Path]]  # in Image.blobs order; where each file is now
    new_blob: Blob | None = None  # the blob this conversion wrote (first in the list)
    new_data_bytes: int = 0  # uncompressed bytes of the chunks in new_blob
    files: int = 0
    dirs: int = 0
    others: int = 0
    logical_bytes: int = 0  # sum of the final tree's file sizes (hard links once)


def _walk(root: Node) -> list[Node]:
    """Every node once (hard links once), directories in name order: a stable order."""
    out: list[Node] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        if node.children:
            stack.extend(node.children[name] for name in sorted(node.children, reverse=True))
    return out


def assemble(
    root: Node,
    slots: dict[Node, list[Slot]],
    spool: Spool,
    cdict: ChunkDict,
    chunk_size: int,
    blob_dir: Path,
) -> Assembled:
    nodes = _walk(root)
    live: set[bytes] = set()
    dict_blobs: dict[str, tuple[Blob, Path]] = {}  # in order of first use
    for node in nodes:
        for s in slots.get(node, ()):
            if s.digest is None:
                continue
            if s.digest in spool:
                live.add(s.digest)
            else:
                dc = cdict.chunks[s.digest]
                dict_blobs.setdefault(dc.blob.digest, (dc.blob, dc.blob_path))
    blob, placed = spool.finish(live, blob_dir)
    blob_files: list[tuple[Blob, Path]] = []
    if blob is not None:
        blob_files.append((blob, blob_dir / blob.digest.partition(":")[2]))
    index_of: dict[str, int] = {}
    for digest, (dblob, path) in dict_blobs.items():
        index_of[digest] = len(blob_files)
        blob_files.append((dblob, path))

    chunks: dict[bytes, Chunk] = {}

    def chunk_of(digest: bytes) -> Chunk:
        c = chunks.get(digest)
        if c is None:
            p = placed.get(digest)
            if p is not None:
                c = Chunk(
                    digest,
                    0,
                    p.compressed_offset,
                    p.compressed_size,
                    p.uncompressed_offset,
                    p.uncompressed_size,
                    p.compressed,
                )
            else:
                dc = cdict.chunks[digest]
                c = dataclasses.replace(dc.chunk, blob_index=index_of[dc.blob.digest])
            chunks[digest] = c
        return c

    image = Image(root=root, blobs=[b for b, _ in blob_files], chunk_size=chunk_size)
    out = Assembled(image, blob_files, blob, sum(p.uncompressed_size for p in placed.values()))
    for node in nodes:
        if node.is_dir:
            out.dirs += 1
        elif node.is_reg:
            out.files += 1
            out.logical_bytes += node.size
            node.chunks = [
                FileChunk(s.file_offset, chunk_of(s.digest))
                for s in slots.get(node, ())
                if s.digest is not None
            ]
        else:
            out.others += 1
    return out
