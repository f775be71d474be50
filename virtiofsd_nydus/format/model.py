"""The in-memory image model: what the converter builds and the bootstrap writer stores.

This is the contract between ``convert/`` (which applies layers, chunks file data and
writes blobs) and ``format/writer`` (which lays the model out as a bootstrap). It holds
no bytes of file data: files refer to chunks, chunks live in blobs.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

DIGEST_SIZE = 32  # blake3-256 of a chunk's uncompressed data
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 4 << 10
MAX_CHUNK_SIZE = 16 << 20


def valid_chunk_size(size: int) -> bool:
    return MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE and size & (size - 1) == 0


class Compression:
    NONE = 0
    ZSTD = 1


@dataclass(frozen=True, slots=True)
class Chunk:
    """One stored chunk. Identical data is stored once: the digest is its identity."""

    digest: bytes  # blake3-256 of the uncompressed bytes
    blob_index: int  # index into Image.blobs
    compressed_offset: int  # byte offset inside the blob
    compressed_size: int
    uncompressed_offset: int  # offset of its data in the blob's uncompressed view (cache)
    uncompressed_size: int  # == chunk_size except for a file's last chunk
    compressed: bool  # False: stored raw (zstd did not shrink it)


@dataclass(frozen=True, slots=True)
class FileChunk:
    """A chunk placed in a file. Ranges of a file covered by no FileChunk are holes."""

    file_offset: int  # multiple of the image's chunk size
    chunk: Chunk


@dataclass(frozen=True, slots=True)
class Blob:
    digest: str  # "sha256:<hex>" of the blob file: its OCI layer digest
    compressed_size: int  # size of the blob file
    uncompressed_size: int  # extent of its uncompressed view: slots * chunk size (docs/storage.md)
    compression: int = Compression.ZSTD


@dataclass(eq=False, slots=True)
class Node:
    """A file-system object. A hard-linked file is one Node reachable from several entries.

    ``mode`` carries the type bits (stat.S_IFREG, S_IFDIR, ...). Times are nanoseconds.
    """

    mode: int
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0  # files: byte length; symlinks: target length; dirs: 0
    rdev: int = 0  # device nodes
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    link_target: bytes | None = None  # symlinks
    children: dict[bytes, Node] | None = None  # directories: name -> node
    chunks: list[FileChunk] = field(default_factory=list)  # regular files, by file_offset

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


@dataclass(slots=True)
class Image:
    root: Node
    blobs: list[Blob] = field(default_factory=list)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    prefetch: list[bytes] = field(default_factory=list)  # absolute paths, in order
