"""Apply layers in order with OCI whiteout semantics; keep only the final visible tree.

Rules (OCI image-spec "layer" + what overlayfs shows):
- ``.wh.NAME`` deletes NAME from lower layers; an entry of the same layer survives it.
- ``.wh..wh..opq`` in D hides every lower entry of D (recursively), keeping D's entries
  from the same layer wherever they appear in the tar.
- A later entry replaces an earlier one at the same path (file↔dir both ways, repeated
  entries in one layer: last wins), except that a directory over a directory merges.
- Hard links resolve against the tree built so far (same or earlier layers).
- Parent paths follow symlinks *inside* the tree (absolute ones from the image root); no
  path can leave the root.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable

from ..errors import ImageError
from ..format.model import Node
from .chunker import ChunkPipeline, Slot
from .entries import Entry, Kind

WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"
MAX_SYMLINK_HOPS = 40

_TYPE_BITS = {
    Kind.FILE: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.CHAR: stat.S_IFCHR,
    Kind.BLOCK: stat.S_IFBLK,
    Kind.FIFO: stat.S_IFIFO,
}


def _new_dir(mode: int = 0o755) -> Node:
    return Node(mode=stat.S_IFDIR | mode, children={})


class TreeBuilder:
    def __init__(self, pipeline: ChunkPipeline) -> None:
        self.root = _new_dir()
        self.pipeline = pipeline
        # chunk slots of each regular file (filled in by the pipeline, maybe later)
        self.slots: dict[Node, list[Slot]] = {}
        # (directory, name) pairs written by the current layer: whiteouts spare them
        self._layer: set[tuple[Node, bytes]] = set()
        self._what = ""

    def apply_layer(self, entries: Iterable[Entry], what: str) -> None:
        self._layer = set()
        self._what = what
        for e in entries:
            self.apply(e)

    def apply(self, e: Entry) -> None:
        if not e.path:
            if e.kind is Kind.DIR:
                self._set_meta(self.root, e)
            return
        head, _, name = e.path.rpartition(b"/")
        if name.startswith(WHITEOUT):
            self._whiteout(head, name)
            return
        parent = self._walk(head, create=True)
        assert parent is not None and parent.children is not None
        existing = parent.children.get(name)
        if e.kind is Kind.DIR and existing is not None and existing.is_dir:
            self._set_meta(existing, e)  # a directory over a directory merges
            self._layer.add((parent, name))
            return
        node = self._make(e)
        parent.children[name] = node
        self._layer.add((parent, name))

    def _make(self, e: Entry) -> Node:
        if e.kind is Kind.HARDLINK:
            assert e.link is not None
            target = self._lookup(e.link)
            if target is None:
                raise ImageError(
                    f"{self._what}: hard link {e.path!r} -> {e.link!r}: no such target"
                )
            if target.is_dir:
                raise ImageError(f"{self._what}: hard link {e.path!r} to a directory")
            return target
        node = Node(mode=_TYPE_BITS[e.kind] | (e.mode & 0o7777))
        self._set_meta(node, e)
        if e.kind is Kind.DIR:
            node.children = {}
        elif e.kind is Kind.SYMLINK:
            assert e.link is not None
            node.link_target = e.link
            node.size = len(e.link)
        elif e.kind in (Kind.CHAR, Kind.BLOCK):
            node.rdev = e.rdev
        elif e.kind is Kind.FILE:
            node.size = e.size
            if e.size:
                assert e.content is not None
                self.slots[node] = self.pipeline.add_file(e.content, e.size, e.data_ranges)
        return node

    @staticmethod
    def _set_meta(node: Node, e: Entry) -> None:
        node.mode = stat.S_IFMT(node.mode) | (e.mode & 0o7777)
        node.uid, node.gid, node.mtime_ns = e.uid, e.gid, e.mtime_ns
        node.xattrs = dict(e.xattrs)

    def _whiteout(self, head: bytes, name: bytes) -> None:
        parent = self._walk(head, create=False)
        if parent is None or parent.children is None:
            return
        if name == OPAQUE:
            self._opaque(parent)
        elif not name.startswith(WHITEOUT + WHITEOUT):  # .wh..wh.* are aufs bookkeeping
            target = name[len(WHITEOUT) :]
            if (parent, target) not in self._layer:
                parent.children.pop(target, None)

    def _opaque(self, top: Node) -> None:
        todo = [top]  # no recursion: a hostile tar can nest deeper than Python's stack
        while todo:
            d = todo.pop()
            assert d.children is not None
            for name, child in list(d.children.items()):
                if (d, name) not in self._layer:
                    del d.children[name]
                elif child.is_dir:
                    todo.append(child)  # merged in this layer: its lower content is hidden too

    def _lookup(self, path: bytes) -> Node | None:
        head, _, name = path.rpartition(b"/")
        parent = self._walk(head, create=False)
        if not name:
            return self.root
        if parent is None or parent.children is None:
            return None
        return parent.children.get(name)

    def _walk(self, path: bytes, create: bool) -> Node | None:
        """The directory at ``path``, following symlinks within the tree; missing parents
        are created (mode 0755) when ``create``, else None is returned."""
        todo = list(reversed(path.split(b"/"))) if path else []
        stack = [self.root]
        hops = 0
        while todo:
            part = todo.pop()
            if part in (b"", b"."):
                continue
            if part == b"..":
                if len(stack) > 1:
                    stack.pop()
                continue
            cur = stack[-1]
            assert cur.children is not None
            child = cur.children.get(part)
            if child is None:
                if not create:
                    return None
                child = _new_dir()
                cur.children[part] = child
                self._layer.add((cur, part))
            elif child.is_symlink:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ImageError(f"{self._what}: too many symlinks resolving {path!r}")
                target = child.link_target or b""
                if target.startswith(b"/"):
                    stack = [self.root]
                todo.extend(reversed(target.split(b"/")))
                continue
            elif not child.is_dir:
                if not create:
                    return None
                raise ImageError(f"{self._what}: {path!r}: a parent is not a directory")
            stack.append(child)
        return stack[-1]
