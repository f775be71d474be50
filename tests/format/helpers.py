"""Builders for model trees and a canonical form to compare images by."""

from __future__ import annotations

import stat
import struct
from typing import Any

import blake3

from virtiofsd_nydus.format import layout as L
from virtiofsd_nydus.format.model import Blob, Chunk, Compression, FileChunk, Image, Node

BLOB = Blob("sha256:" + "ab" * 32, compressed_size=1 << 40, uncompressed_size=1 << 40)
RAW_BLOB = Blob("sha256:" + "cd" * 32, 1 << 40, 1 << 40, Compression.NONE)


def chunk(seed: bytes, size: int, *, blob_index: int = 0, offset: int = 0) -> Chunk:
    """A chunk whose digest is blake3(seed * size) (no real data needed by the format)."""
    digest = blake3.blake3(seed + size.to_bytes(8, "little")).digest()
    return Chunk(digest, blob_index, offset, max(1, size // 2), offset, size, True)


def reg(size: int = 0, chunks: list[FileChunk] | None = None, **kw: Any) -> Node:
    return Node(mode=stat.S_IFREG | kw.pop("perm", 0o644), size=size, chunks=chunks or [], **kw)


def dense_file(size: int, chunk_size: int, seed: bytes = b"x", **kw: Any) -> Node:
    chunks = [
        FileChunk(off, chunk(seed + off.to_bytes(8, "little"), min(chunk_size, size - off)))
        for off in range(0, size, chunk_size)
    ]
    return reg(size, chunks, **kw)


def directory(children: dict[bytes, Node] | None = None, **kw: Any) -> Node:
    return Node(mode=stat.S_IFDIR | kw.pop("perm", 0o755), children=children or {}, **kw)


def symlink(target: bytes, **kw: Any) -> Node:
    return Node(mode=stat.S_IFLNK | 0o777, size=len(target), link_target=target, **kw)


def canonical(image: Image) -> dict[str, Any]:
    """Everything the format stores, keyed by path; hard links named by their first path."""
    first: dict[int, bytes] = {}
    entries: dict[bytes, Any] = {}

    def visit(path: bytes, node: Node) -> None:
        link = first.setdefault(id(node), path)
        attrs = (
            node.mode,
            node.uid,
            node.gid,
            node.mtime_ns,
            len(node.link_target) if node.is_symlink and node.link_target else node.size,
            node.rdev,
            tuple(sorted(node.xattrs.items())),
            node.link_target,
            tuple((fc.file_offset, fc.chunk) for fc in node.chunks),
        )
        entries[path] = (link, attrs)
        if node.is_dir and link == path:
            for name in sorted(node.children or {}):
                visit((path if path != b"/" else b"") + b"/" + name, (node.children or {})[name])

    visit(b"/", image.root)
    return {
        "entries": entries,
        "blobs": image.blobs,
        "chunk_size": image.chunk_size,
        "prefetch": image.prefetch,
    }


def reseal(data: bytes) -> bytes:
    """Recompute every section digest and the header digest: a corrupt bootstrap that
    passes the checksums, to exercise the reader's own bounds checks."""
    buf = bytearray(data)
    (count,) = struct.unpack_from("<H", buf, 20)
    for i in range(count):
        at = L.SUPERBLOCK_SIZE + i * L.SECTION_SIZE
        if at + L.SECTION_SIZE > len(buf):
            break
        _, _, off, size, _, _ = L.SECTION.unpack_from(buf, at)
        if off + size <= len(buf):
            buf[at + 32 : at + 64] = blake3.blake3(bytes(buf[off : off + size])).digest()
    (header_size,) = struct.unpack_from("<I", buf, 16)
    header_size = min(header_size, len(buf))
    h = L.HEADER_DIGEST_OFFSET
    buf[h : h + 32] = bytes(32)
    buf[h : h + 32] = blake3.blake3(bytes(buf[:header_size])).digest()
    return bytes(buf)
