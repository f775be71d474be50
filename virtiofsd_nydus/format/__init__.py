"""The on-disk image format: bootstrap layout, mmap reader, writer, Merkle tree.

docs/format.md describes the bytes; ``model`` is the in-memory tree the converter builds.
"""

from .reader import BlobInfo, Bootstrap, ChunkInfo, FileChunks, Inode
from .writer import write_bootstrap, write_bootstrap_file

__all__ = [
    "BlobInfo",
    "Bootstrap",
    "ChunkInfo",
    "FileChunks",
    "Inode",
    "write_bootstrap",
    "write_bootstrap_file",
]
