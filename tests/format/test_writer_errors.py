"""The writer refuses bad models with a clear error instead of writing a broken bootstrap."""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import replace

import pytest

from virtiofsd_nydus.errors import ImageError, LocalError
from virtiofsd_nydus.format.model import Blob, Compression, FileChunk, Image, Node
from virtiofsd_nydus.format.writer import write_bootstrap

from .helpers import BLOB, chunk, directory, reg, symlink

CS = 4096


def one(node: Node, name: bytes = b"f") -> Image:
    return Image(root=directory({name: node}), blobs=[BLOB], chunk_size=CS)


def loop() -> Image:
    d = directory()
    assert d.children is not None
    d.children[b"self"] = d
    return Image(root=directory({b"d": d}))


def shared_dir() -> Image:
    d = directory()
    return Image(root=directory({b"a": d, b"b": d}))


def bad_chunk(**changes: object) -> Image:
    c = replace(chunk(b"c", CS), **changes)  # type: ignore[arg-type]
    return one(reg(CS, [FileChunk(0, c)]))


CASES: list[tuple[str, Callable[[], Image], type[Exception], str]] = [
    ("chunk size 3000", lambda: Image(root=directory(), chunk_size=3000), LocalError, "chunk size"),
    ("chunk size 32M", lambda: Image(root=directory(), chunk_size=32 << 20), LocalError, "chunk"),
    ("root is a file", lambda: Image(root=reg(0)), ImageError, "root"),
    ("slash in name", lambda: one(reg(0), b"a/b"), ImageError, "invalid entry name"),
    ("NUL in name", lambda: one(reg(0), b"a\0b"), ImageError, "invalid entry name"),
    ("empty name", lambda: one(reg(0), b""), ImageError, "invalid entry name"),
    ("dot name", lambda: one(reg(0), b"."), ImageError, "invalid entry name"),
    ("dotdot name", lambda: one(reg(0), b".."), ImageError, "invalid entry name"),
    ("long name", lambda: one(reg(0), b"n" * 256), ImageError, "invalid entry name"),
    ("str name", lambda: Image(root=directory({"s": reg(0)})), ImageError, "invalid entry"),  # type: ignore[dict-item]
    (
        "mixed name types",
        lambda: Image(root=directory({"s": reg(0), b"b": reg(0)})),  # type: ignore[dict-item]
        ImageError,
        "not all bytes",
    ),
    ("directory cycle", loop, ImageError, "cycle"),
    ("directory hard link", shared_dir, ImageError, "hard link"),
    ("bad mode", lambda: one(Node(mode=0o777)), ImageError, "invalid mode"),
    (
        "chunks on a dir",
        lambda: one(Node(stat.S_IFDIR, chunks=[FileChunk(0, chunk(b"x", CS))])),
        ImageError,
        "only regular",
    ),
    ("symlink without target", lambda: one(Node(stat.S_IFLNK | 0o777)), ImageError, "link target"),
    ("target on a file", lambda: one(reg(0, link_target=b"x")), ImageError, "link target"),
    ("empty target", lambda: one(symlink(b"")), ImageError, "symlink target"),
    ("NUL in target", lambda: one(symlink(b"a\0")), ImageError, "symlink target"),
    ("long target", lambda: one(symlink(b"t" * 4096)), ImageError, "too long"),
    (
        "children on a file",
        lambda: one(reg(0, children={b"x": reg(0)})),
        ImageError,
        "only directories",
    ),
    ("negative uid", lambda: one(reg(0, uid=-1)), ImageError, "out of range"),
    ("huge gid", lambda: one(reg(0, gid=1 << 32)), ImageError, "out of range"),
    ("huge mtime", lambda: one(reg(0, mtime_ns=1 << 100)), ImageError, "out of range"),
    ("empty xattr name", lambda: one(reg(0, xattrs={b"": b"v"})), ImageError, "xattr name"),
    ("big xattr value", lambda: one(reg(0, xattrs={b"user.x": b"v" * 65537})), ImageError, "xattr"),
    (
        "unaligned chunk",
        lambda: one(reg(2 * CS, [FileChunk(100, chunk(b"a", CS))])),
        ImageError,
        "unaligned",
    ),
    ("chunk past size", lambda: one(reg(CS, [FileChunk(CS, chunk(b"a", CS))])), ImageError, "past"),
    (
        "unordered chunks",
        lambda: one(reg(2 * CS, [FileChunk(CS, chunk(b"a", CS)), FileChunk(0, chunk(b"b", CS))])),
        ImageError,
        "unordered",
    ),
    (
        "short middle chunk",
        lambda: one(reg(2 * CS, [FileChunk(0, chunk(b"a", 10))])),
        ImageError,
        "bytes long",
    ),
    ("short digest", lambda: bad_chunk(digest=b"d" * 31), ImageError, "digest"),
    ("blob index", lambda: bad_chunk(blob_index=3), ImageError, "blob index"),
    ("negative offset", lambda: bad_chunk(compressed_offset=-1), ImageError, "outside blob"),
    (
        "outside blob",
        lambda: bad_chunk(compressed_offset=(1 << 40) - 1),
        ImageError,
        "outside blob",
    ),
    ("raw size mismatch", lambda: bad_chunk(compressed=False), ImageError, "raw chunk"),
    (
        "compressed in raw blob",
        lambda: Image(
            root=directory({b"f": reg(CS, [FileChunk(0, chunk(b"c", CS))])}),
            blobs=[Blob("sha256:" + "ab" * 32, 1 << 40, 1 << 40, Compression.NONE)],
            chunk_size=CS,
        ),
        ImageError,
        "uncompressed blob",
    ),
    (
        "blob digest",
        lambda: Image(root=directory(), blobs=[Blob("sha256:xyz", 1, 1)]),
        ImageError,
        "sha256",
    ),
    (
        "blob digest upper",
        lambda: Image(root=directory(), blobs=[Blob("sha256:" + "AB" * 32, 1, 1)]),
        ImageError,
        "sha256",
    ),
    (
        "blob compression",
        lambda: Image(root=directory(), blobs=[Blob("sha256:" + "ab" * 32, 1, 1, 9)]),
        ImageError,
        "compression",
    ),
    (
        "prefetch missing",
        lambda: Image(root=directory(), prefetch=[b"/nope"]),
        LocalError,
        "not in the image",
    ),
    (
        "prefetch relative",
        lambda: Image(root=directory(), prefetch=[b"etc"]),
        LocalError,
        "absolute",
    ),
]


@pytest.mark.parametrize(
    ("make", "error", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rejects(make: Callable[[], Image], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        write_bootstrap(make())
