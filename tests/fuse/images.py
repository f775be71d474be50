"""Real images for the image fs tests: model tree -> zstd blob file + bootstrap.

``BlobFileSource`` is a genuine ChunkSource: it reads a chunk's stored bytes from the
blob file and decodes + verifies them with storage's ``decode_chunk``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import zstandard

from virtiofsd_nydus.errors import BackendError
from virtiofsd_nydus.format.model import Blob, Chunk, FileChunk, Image, Node
from virtiofsd_nydus.format.reader import Bootstrap
from virtiofsd_nydus.format.writer import write_bootstrap_file
from virtiofsd_nydus.storage.chunks import BadChunk, decode_chunk

CS = 4096  # the smallest chunk size keeps fixtures tiny


@dataclass
class File:
    data: bytes
    holes: frozenset[int] = frozenset()  # chunk numbers stored as holes (data must be 0 there)
    mode: int = 0o644
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    uid: int = 0
    gid: int = 0


@dataclass
class Link:
    target: bytes


@dataclass
class Dev:
    mode: int
    rdev: int


Tree = dict[bytes, "File | Link | Dev | Tree"]


class _Blob:
    def __init__(self) -> None:
        self.data = bytearray()
        self.chunks: dict[bytes, tuple[int, int, int, bool, int]] = {}

    def add(self, data: bytes) -> bytes:
        digest = blake3.blake3(data).digest()
        if digest not in self.chunks:
            z = zstandard.ZstdCompressor(level=3).compress(data)
            stored, compressed = (z, True) if len(z) < len(data) else (data, False)
            slot = len(self.chunks) * CS
            self.chunks[digest] = (len(self.data), len(stored), len(data), compressed, slot)
            self.data += stored
        return digest


def _node(spec: object, blob: _Blob, refs: list[tuple[Node, int, bytes]]) -> Node:
    if isinstance(spec, dict):
        kids = {name: _node(s, blob, refs) for name, s in spec.items()}
        return Node(stat.S_IFDIR | 0o755, mtime_ns=1_700_000_000_123_456_789, children=kids)
    if isinstance(spec, Link):
        return Node(stat.S_IFLNK | 0o777, size=len(spec.target), link_target=spec.target)
    if isinstance(spec, Dev):
        return Node(spec.mode, rdev=spec.rdev)
    assert isinstance(spec, File)
    node = Node(
        stat.S_IFREG | spec.mode,
        uid=spec.uid,
        gid=spec.gid,
        size=len(spec.data),
        xattrs=dict(spec.xattrs),
        mtime_ns=-1_500_000_000,
    )  # before 1970: negative
    for i, off in enumerate(range(0, len(spec.data), CS)):
        part = spec.data[off : off + CS]
        if i in spec.holes:
            assert part == bytes(len(part))
            continue
        refs.append((node, off, blob.add(part)))
    return node


@dataclass
class Built:
    bootstrap: Bootstrap
    source: BlobFileSource
    blob_path: Path


def build(tree: Tree, tmp: Path) -> Built:
    blob = _Blob()
    refs: list[tuple[Node, int, bytes]] = []
    root = _node(tree, blob, refs)
    sha = hashlib.sha256(blob.data).hexdigest()
    blob_path = tmp / sha
    blob_path.write_bytes(blob.data)
    model_blob = Blob("sha256:" + sha, len(blob.data), max(1, len(blob.chunks)) * CS)
    for node, off, digest in refs:
        coff, csize, usize, compressed, slot = blob.chunks[digest]
        node.chunks.append(FileChunk(off, Chunk(digest, 0, coff, csize, slot, usize, compressed)))
    image = Image(root, [model_blob], chunk_size=CS)
    path = tmp / "bootstrap"
    write_bootstrap_file(image, path)
    bs = Bootstrap.open(path)
    return Built(bs, BlobFileSource(bs, tmp), blob_path)


class BlobFileSource:
    """Chunks straight from local blob files named by their sha256, verified."""

    def __init__(self, bs: Bootstrap, blob_dir: Path) -> None:
        self.bs = bs
        self.blob_dir = blob_dir
        self.reads = 0

    def read_chunk(self, chunk_index: int) -> bytes:
        c = self.bs.chunk(chunk_index)
        blob = self.bs.blobs[c.blob_index]
        self.reads += 1
        path = self.blob_dir / blob.digest.removeprefix("sha256:")
        fd = os.open(path, os.O_RDONLY)
        try:
            stored = os.pread(fd, c.compressed_size, c.compressed_offset)
        finally:
            os.close(fd)
        try:
            return decode_chunk(c, stored)
        except BadChunk as e:
            raise BackendError(f"blob {blob.digest} chunk {chunk_index}: {e}") from None
