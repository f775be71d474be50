"""What a layer is made of, whatever its container: a stream of file-system entries.

Tar layers, plain directories and plain tars all become ``Entry`` records that
``layers.TreeBuilder`` applies in order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


class Content(Protocol):
    """A file's data, read front to back; ``seek`` skips holes."""

    def read(self, n: int = -1, /) -> bytes: ...

    def seek(self, pos: int, whence: int = 0, /) -> int: ...


@dataclass(slots=True)
class Entry:
    path: bytes  # normalised (see normalize); b"" is the root
    kind: Kind
    mode: int = 0o644  # permission bits only (07777)
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0  # regular files
    rdev: int = 0  # device nodes
    link: bytes | None = None  # symlink target (raw) or hard link target (normalised path)
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    content: Content | None = None  # regular files; valid until the next entry
    data_ranges: list[tuple[int, int]] | None = None  # sparse map (offset, length); None = dense


def normalize(path: bytes) -> bytes:
    """Make a member name relative to the root: no '/', '.', '..' escapes, no empty parts."""
    parts: list[bytes] = []
    for part in path.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return b"/".join(parts)
