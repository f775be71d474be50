"""The FUSE protocol (sans-I/O) and the file systems served over it.

``Server(fs).handle(request_bytes, max_reply) -> reply_bytes | None`` is the whole
protocol surface; ``FileSystem`` is what a file system implements (``ImageFS`` for a
bootstrap + chunk source, ``PassthroughFS`` for a host directory, ``PseudoFS`` to
mount several of them at sub-paths of one export).
"""

from .filesystem import (
    Attr,
    CachePolicy,
    Context,
    DirEntry,
    Entry,
    FileRange,
    FileSystem,
    SetAttr,
    StatFs,
    Timeouts,
)
from .imagefs import ChunkSource, ImageFS
from .passthroughfs import PassthroughFS
from .pseudofs import PseudoFS
from .server import Server

__all__ = [
    "Attr",
    "CachePolicy",
    "ChunkSource",
    "Context",
    "DirEntry",
    "Entry",
    "FileRange",
    "FileSystem",
    "ImageFS",
    "PassthroughFS",
    "PseudoFS",
    "Server",
    "SetAttr",
    "StatFs",
    "Timeouts",
]
