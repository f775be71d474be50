"""A tiny read-only in-memory file system implementing the FileSystem interface.

It is a real (if small) implementation, used to drive the server through every op
before image fixtures are involved.
"""

from __future__ import annotations

import errno
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from virtiofsd_nydus.fuse import abi
from virtiofsd_nydus.fuse.filesystem import (
    Attr,
    CachePolicy,
    DirEntry,
    Entry,
    FileSystem,
    StatFs,
    Timeouts,
    dtype_of,
    fs_error,
)


@dataclass
class MemNode:
    mode: int
    data: bytes = b""
    target: bytes = b""
    children: dict[bytes, int] = field(default_factory=dict)
    parent: int = 1
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


class MemFS(FileSystem):
    def __init__(
        self, want: int = 0, policy: CachePolicy = CachePolicy.ALWAYS, negative: bool = False
    ) -> None:
        self.negative = negative
        self.nodes: dict[int, MemNode] = {1: MemNode(stat.S_IFDIR | 0o755)}
        self.lookups: Counter[int] = Counter()
        self.want = want
        self.policy = policy
        self.inits: list[int] = []
        self.destroys = 0

    # building ------------------------------------------------------------------------
    def add(self, parent: int, name: bytes, node: MemNode) -> int:
        ino = max(self.nodes) + 1
        node.parent = parent
        self.nodes[ino] = node
        self.nodes[parent].children[name] = ino
        return ino

    # FileSystem ----------------------------------------------------------------------
    def init(self, capable: int) -> int:
        self.inits.append(capable)
        self.lookups.clear()
        return self.want

    def destroy(self) -> None:
        self.destroys += 1
        self.lookups.clear()

    def _node(self, ino: int) -> MemNode:
        node = self.nodes.get(ino)
        if node is None:
            raise fs_error(errno.ENOENT)
        return node

    def _attr(self, ino: int) -> Attr:
        n = self._node(ino)
        size = len(n.data) if stat.S_ISREG(n.mode) else len(n.target)
        return Attr(ino, size, (size + 511) // 512, 0, 5, 0, 0, 6, 0, n.mode, 1, 0, 0, 0)

    def _entry(self, ino: int) -> Entry:
        self.lookups[ino] += 1
        return Entry(ino, self._attr(ino), self.policy.timeouts)

    def lookup(self, parent: int, name: bytes) -> Entry:
        p = self._node(parent)
        if not stat.S_ISDIR(p.mode):
            raise fs_error(errno.ENOTDIR)
        ino = p.children.get(name)
        if ino is None:
            if self.negative:
                return Entry.negative(self.policy.timeouts)
            raise fs_error(errno.ENOENT)
        return self._entry(ino)

    def forget(self, ino: int, nlookup: int) -> None:
        self.lookups[ino] -= nlookup
        if self.lookups[ino] <= 0:
            del self.lookups[ino]

    def getattr(self, ino: int, fh: int | None) -> tuple[Attr, Timeouts]:
        return self._attr(ino), self.policy.timeouts

    def readlink(self, ino: int) -> bytes:
        n = self._node(ino)
        if not stat.S_ISLNK(n.mode):
            raise fs_error(errno.EINVAL)
        return n.target

    def open(self, ino: int, flags: int) -> tuple[int, int]:
        n = self._node(ino)
        if stat.S_ISDIR(n.mode):
            raise fs_error(errno.EISDIR)
        return 7, abi.FOPEN_KEEP_CACHE

    def read(self, ino: int, fh: int, offset: int, size: int) -> bytes:
        return self._node(ino).data[offset : offset + size]

    def opendir(self, ino: int, flags: int) -> tuple[int, int]:
        if not stat.S_ISDIR(self._node(ino).mode):
            raise fs_error(errno.ENOTDIR)
        return 9, abi.FOPEN_CACHE_DIR

    def readdir(self, ino: int, fh: int, offset: int) -> Iterator[DirEntry]:
        n = self._node(ino)
        items = [(b".", ino), (b"..", n.parent), *sorted(n.children.items())]
        for i in range(offset, len(items)):
            name, child = items[i]
            yield DirEntry(child, i + 1, dtype_of(self.nodes[child].mode), name)

    def readdirplus_entry(self, parent: int, entry: DirEntry) -> Entry | None:
        if entry.name in (b".", b".."):
            return None
        return self._entry(entry.ino)

    def statfs(self, ino: int) -> StatFs:
        return StatFs(100, 0, 0, len(self.nodes), 0, 4096, 255, 4096)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        value = self._node(ino).xattrs.get(name)
        if value is None:
            raise fs_error(errno.ENODATA)
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        return sorted(self._node(ino).xattrs)

    def access(self, ino: int, mask: int, uid: int, gid: int) -> None:
        self._node(ino)
        if mask & 2:  # W_OK
            raise fs_error(errno.EROFS)

    def lseek(self, ino: int, fh: int, offset: int, whence: int) -> int:
        size = len(self._node(ino).data)
        if offset >= size:
            raise fs_error(errno.ENXIO)
        return offset if whence == abi.SEEK_DATA else size


def sample() -> tuple[MemFS, dict[str, int]]:
    """root/{hello (file), sub/ (dir with 40 files), link -> hello}."""
    fs = MemFS()
    inos = {
        "hello": fs.add(
            1,
            b"hello",
            MemNode(
                stat.S_IFREG | 0o644,
                data=b"hello world\n",
                xattrs={b"user.a": b"1", b"user.bb": b"22"},
            ),
        ),
        "sub": fs.add(1, b"sub", MemNode(stat.S_IFDIR | 0o755)),
        "link": fs.add(1, b"link", MemNode(stat.S_IFLNK | 0o777, target=b"hello")),
    }
    for i in range(40):
        fs.add(inos["sub"], b"file-%02d-%s" % (i, b"x" * i), MemNode(stat.S_IFREG | 0o600))
    return fs, inos
