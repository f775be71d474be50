"""Writer -> reader round trips of handcrafted trees covering every kind of node."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

from virtiofsd_nydus.errors import ImageError, LocalError
from virtiofsd_nydus.format.model import FileChunk, Image, Node
from virtiofsd_nydus.format.reader import Bootstrap
from virtiofsd_nydus.format.writer import write_bootstrap, write_bootstrap_file

from .helpers import BLOB, RAW_BLOB, canonical, chunk, dense_file, directory, reg, symlink

CS = 4096
DEEP = 60


def sample_image() -> Image:
    shared = dense_file(3 * CS + 7, CS, b"shared", uid=1000, gid=1000)
    sparse = reg(
        4 * CS + 100,
        [
            FileChunk(0, chunk(b"s0", CS)),
            FileChunk(2 * CS, chunk(b"s2", CS)),
            FileChunk(4 * CS, chunk(b"s4", 100)),
        ],
    )
    deep = directory({b"leaf": reg(0)})
    for i in reversed(range(DEEP - 1)):
        deep = directory({f"d{i}".encode(): deep})
    raw = chunk(b"raw", CS, blob_index=1)
    raw = type(raw)(raw.digest, 1, 0, CS, 0, CS, False)
    root = directory(
        {
            b"etc": directory(
                {
                    b"passwd": dense_file(100, CS, b"pw", mtime_ns=1_700_000_000_123_456_789),
                    b"hard1": shared,
                    b"empty-dir": directory(),
                },
                xattrs={b"trusted.overlay.opaque": b"y"},
            ),
            b"bin": directory(
                {
                    b"hard2": shared,
                    b"sh": symlink(b"/bin/busybox"),
                    b"rel": symlink(b"../etc/passwd", xattrs={b"user.l": b"1"}),
                }
            ),
            b"dev": directory(
                {
                    b"null": Node(mode=stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3)),
                    b"sda": Node(mode=stat.S_IFBLK | 0o660, rdev=os.makedev(8, 0), gid=6),
                    b"fifo": Node(mode=stat.S_IFIFO | 0o600),
                    b"sock": Node(mode=stat.S_IFSOCK | 0o777, mtime_ns=-1_500_000_000),
                }
            ),
            b"hard3": shared,
            b"empty": reg(0, xattrs={b"security.capability": b"\x01\x00\x00\x02", b"user.a": b""}),
            b"sparse": sparse,
            b"raw": reg(CS, [FileChunk(0, raw)], perm=0o4755),
            b"x" * 255: reg(0),
            "caf\u00e9-\u65e5\u672c".encode(): reg(0),
            b"\xff\xfe-not-utf8": reg(0),
            b"deep": deep,
        },
        mtime_ns=5,
    )
    return Image(
        root=root,
        blobs=[BLOB, RAW_BLOB],
        chunk_size=CS,
        prefetch=[b"/etc/passwd", b"/bin", b"/sparse"],
    )


@pytest.fixture(scope="module")
def data() -> bytes:
    return write_bootstrap(sample_image())


@pytest.fixture
def bs(data: bytes) -> Bootstrap:
    return Bootstrap.from_bytes(data)


def test_round_trip_model(bs: Bootstrap) -> None:
    assert canonical(bs.to_image()) == canonical(sample_image())
    bs.verify()
    bs.verify_merkle()


def test_open_mapped_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bootstrap"
    write_bootstrap_file(sample_image(), path)
    assert path.read_bytes() == data
    with Bootstrap.open(path) as mapped:
        assert mapped.resolve(b"/etc/passwd") is not None
        assert canonical(mapped.to_image()) == canonical(sample_image())


def test_attributes_and_links(bs: Bootstrap) -> None:
    assert bs.root_ino == 1 and bs.inode(1).is_dir
    ino = bs.resolve(b"/etc/hard1")
    assert ino is not None
    assert bs.resolve(b"/bin/hard2") == ino == bs.resolve(b"hard3")
    node = bs.inode(ino)
    assert (node.nlink, node.uid, node.gid, node.size) == (3, 1000, 1000, 3 * CS + 7)
    assert bs.inode(bs.resolve(b"/etc/passwd") or 0).mtime_ns == 1_700_000_000_123_456_789
    assert bs.inode(bs.resolve(b"/dev/sock") or 0).mtime_ns == -1_500_000_000
    # A directory links itself, its parent entry and each subdirectory's "..".
    assert bs.inode(1).nlink == 2 + 4
    assert bs.inode(bs.resolve(b"/etc") or 0).nlink == 3
    assert bs.inode(bs.resolve(b"/etc/empty-dir") or 0).nlink == 2
    null = bs.inode(bs.resolve(b"/dev/null") or 0)
    assert stat.S_ISCHR(null.mode) and null.rdev == os.makedev(1, 3)
    for name, check in [(b"sda", stat.S_ISBLK), (b"fifo", stat.S_ISFIFO), (b"sock", stat.S_ISSOCK)]:
        assert check(bs.inode(bs.lookup(bs.resolve(b"/dev") or 0, name) or 0).mode)
    assert bs.inode(bs.resolve(b"/raw") or 0).mode == stat.S_IFREG | 0o4755


def test_symlinks(bs: Bootstrap) -> None:
    sh = bs.resolve(b"/bin/sh") or 0
    assert bs.readlink(sh) == b"/bin/busybox" and bs.inode(sh).size == 12
    assert bs.readlink(bs.resolve(b"/bin/rel") or 0) == b"../etc/passwd"
    with pytest.raises(LocalError):
        bs.readlink(1)


def test_names(bs: Bootstrap) -> None:
    for name in [b"x" * 255, "caf\u00e9-\u65e5\u672c".encode(), b"\xff\xfe-not-utf8"]:
        assert bs.lookup(1, name) is not None
    assert bs.lookup(1, b"x" * 254) is None
    assert bs.lookup(1, b"") is None
    path = b"/deep/" + b"/".join(f"d{i}".encode() for i in range(DEEP - 1)) + b"/leaf"
    leaf = bs.resolve(path)
    assert leaf is not None and bs.inode(leaf).is_reg
    assert bs.resolve(path + b"/..") is None  # a file has no entries
    assert bs.resolve(b"/deep/d0/..") == bs.resolve(b"/deep")
    assert bs.resolve(b"/nope/passwd") is None
    assert bs.lookup(bs.resolve(b"/etc/passwd") or 0, b"x") is None


def test_readdir(bs: Bootstrap) -> None:
    entries = list(bs.readdir(1))
    names = [n for n, _ in entries]
    assert names == sorted(names) and len(names) == bs.dir_entry_count(1) == 11
    assert list(bs.readdir(1, 4)) == entries[4:]
    assert list(bs.readdir(1, 11)) == []
    assert all(bs.lookup(1, n) == i for n, i in entries)
    typed = {n: t for n, _, t in bs.readdir_typed(bs.resolve(b"/dev") or 0)}
    assert typed == {b"fifo": 1, b"null": 2, b"sda": 6, b"sock": 12}
    assert bs.dir_entry_count(bs.resolve(b"/etc/empty-dir") or 0) == 0
    with pytest.raises(LocalError):
        list(bs.readdir(bs.resolve(b"/etc/passwd") or 0))


def test_xattrs(bs: Bootstrap) -> None:
    empty = bs.resolve(b"/empty") or 0
    assert bs.xattrs(empty) == {b"security.capability": b"\x01\x00\x00\x02", b"user.a": b""}
    assert bs.getxattr(empty, b"user.a") == b""
    assert bs.getxattr(empty, b"user.b") is None
    assert bs.listxattr(empty) == [b"security.capability", b"user.a"]
    assert bs.getxattr(bs.resolve(b"/etc") or 0, b"trusted.overlay.opaque") == b"y"
    assert bs.getxattr(bs.resolve(b"/bin/rel") or 0, b"user.l") == b"1"
    assert bs.xattrs(1) == {}


def test_sparse_chunks(bs: Bootstrap) -> None:
    ino = bs.resolve(b"/sparse") or 0
    fcs = bs.file_chunks(ino)
    assert [off for off, _ in fcs] == [0, 2 * CS, 4 * CS]
    assert [off for off, _ in fcs.covering(0, 1)] == [0]
    assert fcs.covering(CS, CS) == []  # a hole costs no chunk
    assert [off for off, _ in fcs.covering(CS + 5, CS)] == [2 * CS]
    assert [off for off, _ in bs.chunks_covering(ino, 100, 10 * CS)] == [0, 2 * CS, 4 * CS]
    assert fcs.covering(10 * CS, 5) == []
    last = bs.chunk(fcs[-1][1])
    assert (last.uncompressed_size, last.blob_index, last.compressed) == (100, 0, True)
    assert list(bs.file_chunks(bs.resolve(b"/empty") or 0)) == []
    raw = bs.chunk(bs.file_chunks(bs.resolve(b"/raw") or 0)[0][1])
    assert (raw.blob_index, raw.compressed, raw.compressed_size) == (1, False, CS)
    with pytest.raises(LocalError):
        bs.file_chunks(1)


def test_chunk_table_dedup(bs: Bootstrap) -> None:
    # The shared file's 4 chunks are stored once though 3 entries name the file; passwd 1,
    # sparse 3, raw 1.
    assert bs.chunk_count == 4 + 1 + 3 + 1
    with pytest.raises(ImageError):
        bs.chunk(bs.chunk_count)


def test_blobs_and_prefetch(bs: Bootstrap) -> None:
    assert [b.digest for b in bs.blobs] == [BLOB.digest, RAW_BLOB.digest]
    assert [b.compression for b in bs.blobs] == [1, 0]
    assert bs.prefetch_inodes() == [bs.resolve(p) for p in (b"/etc/passwd", b"/bin", b"/sparse")]


def test_walk(bs: Bootstrap) -> None:
    walked = list(bs.walk())
    assert walked[0] == (b"/", 1)
    assert all(bs.resolve(p) == i for p, i in walked)
    assert len(walked) == len({p for p, _ in walked})
    # Depth first: a directory's descendants come right after it.
    paths = [p for p, _ in walked]
    assert paths.index(b"/bin/sh") < paths.index(b"/caf\xc3\xa9-\xe6\x97\xa5\xe6\x9c\xac")
    assert len({i for _, i in walked}) == bs.inode_count


def test_merkle_shape() -> None:
    # Equal subtrees hash equal wherever they sit; any change reaches the root.
    a = write_bootstrap(sample_image())
    img = sample_image()
    assert img.root.children is not None
    img.root.children[b"copy"] = directory({b"leaf": reg(0)})
    b = Bootstrap.from_bytes(write_bootstrap(img))
    leaf_dir = b.resolve(b"/deep/" + b"/".join(f"d{i}".encode() for i in range(DEEP - 1)))
    assert b.inode(b.resolve(b"/copy") or 0).digest == b.inode(leaf_dir or 0).digest
    assert b.root_digest != Bootstrap.from_bytes(a).root_digest
    img2 = sample_image()
    assert img2.root.children is not None
    img2.root.children[b"empty"].uid = 1
    assert Bootstrap.from_bytes(write_bootstrap(img2)).root_digest != b.root_digest


def test_deterministic() -> None:
    a = sample_image()
    b = sample_image()
    assert b.root.children is not None
    b.root.children = dict(reversed(list(b.root.children.items())))
    assert write_bootstrap(a) == write_bootstrap(b)


def test_big_directory_lookup() -> None:
    rng = random.Random(7)
    names = {bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 40))) for _ in range(5000)}
    names = {n for n in names if b"/" not in n and n not in (b".", b"..")}
    img = Image(root=directory({n: reg(0) for n in names}), chunk_size=CS)
    bs = Bootstrap.from_bytes(write_bootstrap(img))
    found = {n: bs.lookup(1, n) for n in names}
    assert len(set(found.values())) == len(names) and None not in found.values()
    assert sorted(names) == [n for n, _ in bs.readdir(1)]
    for n in sorted(names)[::50]:
        assert bs.lookup(1, n + b"\x00") is None
        assert bs.lookup(1, n[:-1] + bytes([n[-1] - 1]) if n[-1] > 1 else n + b"\x01") in (
            None,
            *found.values(),
        )
    assert bs.lookup(1, b"\x00") is None and bs.lookup(1, b"\xff" * 41) is None


def test_empty_root() -> None:
    bs = Bootstrap.from_bytes(write_bootstrap(Image(root=directory())))
    assert list(bs.walk()) == [(b"/", 1)] and bs.inode(1).nlink == 2
    bs.verify()
    bs.verify_merkle()


@pytest.mark.parametrize("fallback", [False, True], ids=["key-column", "python-bisect"])
def test_lookup_names_sharing_key_prefixes(fallback: bool) -> None:
    stems = [b"abcdefg", b"abcdefgh", b"abcdefgi", b"libfoo.so", b"a", b"\xff" * 8, b"\x01"]
    names = {s + tail for s in stems for tail in (b"", b".1", b".10", b".1.2", b"\x01", b"\xff")}
    names |= {b"abcdefgh" * 20, b"abcdefgh" * 20 + b"z", b"abcdefgh" * 19}
    bs = Bootstrap.from_bytes(
        write_bootstrap(Image(root=directory({n: reg(0) for n in names}), chunk_size=CS))
    )
    if fallback:
        bs._keys = None  # what a big-endian host does
    got = {n: bs.lookup(1, n) for n in names}
    assert sorted(got.values(), key=lambda i: i or 0) == list(range(2, len(names) + 2))
    assert dict(bs.readdir(1)) == got
    probes = {n[:-1] for n in names} | {n + b"\x00" for n in names} | {n + b"!" for n in names}
    for p in probes - names:
        assert bs.lookup(1, p) is None, p
