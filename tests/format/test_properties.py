"""Property tests: random trees round-trip; truncated or corrupted bootstraps never crash."""

from __future__ import annotations

import contextlib
import stat
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtiofsd_nydus.errors import ImageError
from virtiofsd_nydus.format.model import Blob, Chunk, Compression, FileChunk, Image, Node
from virtiofsd_nydus.format.reader import Bootstrap
from virtiofsd_nydus.format.writer import write_bootstrap

from .helpers import canonical, reseal

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = (
    st.binary(min_size=1, max_size=12)
    .map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"~"))
    .filter(lambda b: b not in (b".", b".."))
)
xattrs = st.dictionaries(names, st.binary(max_size=16), max_size=3)
BLOBS = [
    Blob("sha256:" + "11" * 32, 1 << 40, 1 << 40, Compression.ZSTD),
    Blob("sha256:" + "22" * 32, 1 << 40, 1 << 40, Compression.NONE),
]


@st.composite
def images(draw: Any) -> Image:
    cs = draw(st.sampled_from([4096, 8192]))
    pool: list[Chunk] = []
    files: list[Node] = []
    dirs: list[Node] = []

    def attrs() -> dict[str, Any]:
        return {
            "uid": draw(st.integers(0, 2**32 - 1)),
            "gid": draw(st.integers(0, 70000)),
            "mtime_ns": draw(st.integers(-(2**62), 2**62)),
            "xattrs": draw(xattrs),
        }

    def new_chunk(size: int) -> Chunk:
        same = [c for c in pool if c.uncompressed_size == size]
        if same and draw(st.booleans()):
            return draw(st.sampled_from(same))  # a deduplicated chunk
        blob = draw(st.integers(0, 1))
        compressed = blob == 0 and draw(st.booleans())
        csize = draw(st.integers(1, 2 * size)) if compressed else size
        c = Chunk(
            draw(st.binary(min_size=32, max_size=32)),
            blob,
            8 * len(pool),
            csize,
            0,
            size,
            compressed,
        )
        pool.append(c)
        return c

    def leaf() -> Node:
        kind = draw(st.sampled_from(["reg", "reg", "lnk", "chr", "blk", "fifo", "sock"]))
        perm = draw(st.integers(0, 0o7777))
        if kind == "reg":
            size = draw(st.integers(0, 4 * cs + 2))
            chunks = [
                FileChunk(off, new_chunk(min(cs, size - off)))
                for off in range(0, size, cs)
                if draw(st.booleans())  # holes cost no chunk
            ]
            node = Node(stat.S_IFREG | perm, size=size, chunks=chunks, **attrs())
            files.append(node)
            return node
        if kind == "lnk":
            target = draw(st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\0", b"x")))
            return Node(stat.S_IFLNK | 0o777, size=len(target), link_target=target, **attrs())
        fmt = {
            "chr": stat.S_IFCHR,
            "blk": stat.S_IFBLK,
            "fifo": stat.S_IFIFO,
            "sock": stat.S_IFSOCK,
        }
        rdev = draw(st.integers(0, 2**64 - 1)) if kind in ("chr", "blk") else 0
        return Node(fmt[kind] | perm, rdev=rdev, **attrs())

    def directory(depth: int) -> Node:
        children: dict[bytes, Node] = {}
        for _ in range(draw(st.integers(0, 5 if depth < 4 else 0))):
            nested = depth < 4 and draw(st.integers(0, 3)) == 0
            children[draw(names)] = directory(depth + 1) if nested else leaf()
        node = Node(stat.S_IFDIR | draw(st.integers(0, 0o7777)), children=children, **attrs())
        dirs.append(node)
        return node

    root = directory(0)
    for _ in range(draw(st.integers(0, 3))):  # hard links
        if files:
            target = draw(st.sampled_from(dirs))
            assert target.children is not None
            target.children.setdefault(draw(names), draw(st.sampled_from(files)))
    image = Image(root=root, blobs=list(BLOBS), chunk_size=cs)
    # Prefetch the first path of some directories (never hard-linked): it round-trips as is.
    dir_paths = [p for p, (_, a) in canonical(image)["entries"].items() if stat.S_ISDIR(a[0])]
    image.prefetch = draw(st.lists(st.sampled_from(dir_paths), unique=True, max_size=3))
    return image


@SETTINGS
@given(images())
def test_round_trip(image: Image) -> None:
    data = write_bootstrap(image)
    bs = Bootstrap.from_bytes(data)
    bs.verify()
    bs.verify_merkle()
    again = bs.to_image()
    assert canonical(again) == canonical(image)
    assert write_bootstrap(again) == data  # the writer is a fixpoint: deterministic
    for path, ino in bs.walk():
        assert bs.resolve(path) == ino
        node = bs.inode(ino)
        if node.is_reg:
            check_covering(bs, ino, image.chunk_size)
        if path != b"/":
            parent, _, name = path.rpartition(b"/")
            assert bs.lookup(bs.resolve(parent or b"/") or 0, name) == ino
            assert bs.lookup(bs.resolve(parent or b"/") or 0, name + b"\x01") is None


def check_covering(bs: Bootstrap, ino: int, cs: int) -> None:
    size = bs.inode(ino).size
    chunks = [(off, bs.chunk(i).uncompressed_size, i) for off, i in bs.file_chunks(ino)]
    for off in {0, 1, cs - 1, cs, cs + 1, size // 2, max(size - 1, 0), size, size + 5}:
        for length in (1, 2, cs, 3 * cs + 1, size + 10):
            want = [(o, i) for o, n, i in chunks if o < off + length and o + n > off]
            assert bs.chunks_covering(ino, off, length) == want, (off, length)
    assert bs.chunks_covering(ino, 0, 0) == []


def exercise(bs: Bootstrap) -> None:
    """Touch every read path of the API."""
    for ino in range(1, min(bs.inode_count, 300) + 1):
        node = bs.inode(ino)
        bs.xattrs(ino)
        bs.getxattr(ino, b"user.a")
        if node.is_dir:
            entries = list(bs.readdir(ino))
            for name, _ in entries[:10]:
                bs.lookup(ino, name)
            bs.lookup(ino, b"\xff" * 9)
            bs.lookup(ino, b"a")
        elif node.is_symlink:
            bs.readlink(ino)
        elif node.is_reg:
            fcs = bs.file_chunks(ino)
            for _, index in fcs:
                bs.chunk(index)
            fcs.covering(0, node.size + 1)
    assert bs.blobs is not None
    bs.prefetch_inodes()
    bs.resolve(b"/a/b/../c")
    for _ in bs.walk():
        pass
    bs.to_image()
    bs.verify_merkle()


@st.composite
def corrupted(draw: Any) -> tuple[bytes, bytes]:
    data = write_bootstrap(draw(images()))
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(buf) - 1))
        buf[pos] ^= 1 << draw(st.integers(0, 7))
    return data, bytes(buf)


@SETTINGS
@given(images(), st.data())
def test_truncation_is_an_image_error(image: Image, data: Any) -> None:
    raw = write_bootstrap(image)
    cut = data.draw(st.integers(0, len(raw) - 1))
    try:
        Bootstrap.from_bytes(raw[:cut])
    except ImageError:
        return
    raise AssertionError(f"truncated to {cut} of {len(raw)} bytes yet opened")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted())
def test_bit_flips_caught_by_open_or_verify(pair: tuple[bytes, bytes]) -> None:
    original, flipped = pair
    if flipped == original:
        return
    try:
        bs = Bootstrap.from_bytes(flipped)
    except ImageError:
        return  # the header digest or a bounds check caught it
    with contextlib.suppress(ImageError):
        exercise(bs)  # whatever it reads, only ImageError may come out
    try:
        bs.verify()
    except ImageError:
        return
    raise AssertionError("a flipped bit passed verify()")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted())
def test_resealed_corruption_never_crashes(pair: tuple[bytes, bytes]) -> None:
    # Digests recomputed over the corrupt bytes: only the reader's own checks stand between
    # the corruption and an IndexError, struct.error, a hang or an out-of-bounds read.
    bs_bytes = reseal(pair[1])
    try:
        bs = Bootstrap.from_bytes(bs_bytes)
        bs.verify()
        exercise(bs)
    except ImageError:
        pass
