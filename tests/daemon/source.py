"""The source tree every daemon test serves: one of each kind of node, with known bytes."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

CHUNK = 64 << 10  # the image's chunk size: small, so reads cross many chunk boundaries
BIG_SIZE = 16 * CHUNK + 12345
SPARSE_SIZE = 16 * CHUNK
SPARSE_DATA = ((4 * CHUNK, b"A" * 100), (SPARSE_SIZE - 10, b"Z" * 10))  # (offset, bytes)
BIGDIR_ENTRIES = 3000
BIG_XATTR = b"v" * 3000


def make_source(root: Path) -> Path:
    """Write the tree under ROOT (which must not exist); returns ROOT."""
    root.mkdir()
    hello = root / "hello.txt"
    hello.write_bytes(b"hello, virtio-fs\n" * 300)
    os.setxattr(hello, "user.greeting", b"hi there")
    os.setxattr(hello, "user.big", BIG_XATTR)
    (root / "big.bin").write_bytes(random.Random(7).randbytes(BIG_SIZE))
    with open(root / "sparse.bin", "wb") as f:
        f.truncate(SPARSE_SIZE)
        for off, data in SPARSE_DATA:
            f.seek(off)
            f.write(data)
    (root / "empty").touch()
    (root / "one").mkdir()
    (root / "two").mkdir()
    (root / "one" / "orig").write_bytes(b"linked content\n")
    os.link(root / "one" / "orig", root / "two" / "hard")
    (root / "sym").symlink_to("hello.txt")
    (root / "dangling").symlink_to("/nowhere/at/all")
    os.mkfifo(root / "fifo")
    with contextlib.suppress(PermissionError):  # device nodes need root
        os.mknod(root / "null", 0o20666, os.makedev(1, 3))
    deep = root / "sub" / "deep"
    deep.mkdir(parents=True)
    (deep / "file").write_bytes(b"deep\n")
    bigdir = root / "bigdir"
    bigdir.mkdir()
    for i in range(BIGDIR_ENTRIES):
        (bigdir / f"entry-{i:05d}").write_bytes(b"%d\n" % i)
    return root
