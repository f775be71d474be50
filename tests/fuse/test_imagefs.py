"""The image file system over a real bootstrap and zstd blob, driven through the Server."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtiofsd_nydus.errors import BackendError
from virtiofsd_nydus.fuse import abi
from virtiofsd_nydus.fuse.abi import Opcode
from virtiofsd_nydus.fuse.filesystem import CachePolicy, FileRange, decode_rdev, encode_rdev
from virtiofsd_nydus.fuse.imagefs import ImageFS
from virtiofsd_nydus.fuse.server import Server
from virtiofsd_nydus.storage import CacheDir, ChunkStore, LocalFsBackend

from .images import CS, Built, Dev, File, Link, build
from .session import Session as _Session
from .wire import (
    BIG,
    ENTRY_NODEID,
    KERNEL_FLAGS,
    BufferChain,
    attr_of_entry,
    cstr,
    dirents,
    entry_out,
    init_body,
    parse,
    read_in,
    request,
    u32,
)


def _pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed + (i >> 12)) & 0xFF for i in range(n))


BIG_DATA = _pattern(3 * CS + 1234, 1)
SPARSE_HOLES = frozenset({0, 2, 3})
SPARSE_DATA = b"".join(
    bytes(CS) if i in SPARSE_HOLES else _pattern(CS, i) for i in range(5)
) + _pattern(100, 9)
DIR_NAMES = [b"entry-%03d" % i + b"z" * (i % 37) for i in range(120)]

TREE = {
    b"hello": File(b"hello world\n", xattrs={b"user.greeting": b"hi", b"user.long": b"v" * 300}),
    b"big": File(BIG_DATA, mode=0o755),
    b"sparse": File(SPARSE_DATA, holes=SPARSE_HOLES),
    b"allhole": File(bytes(3 * CS), holes=frozenset({0, 1, 2})),
    b"empty": File(b""),
    b"private": File(b"secret", mode=0o640, uid=1000, gid=100),
    b"link": Link(b"hello"),
    b"null": Dev(stat.S_IFCHR | 0o666, os.makedev(1, 3)),
    b"wide": Dev(stat.S_IFBLK | 0o660, os.makedev(259, 70000)),
    b"dir": {name: File(name) for name in DIR_NAMES} | {b"sub": {b"deep": File(b"deep\n")}},
}
EXPECTED = {
    b"hello": b"hello world\n",
    b"big": BIG_DATA,
    b"sparse": SPARSE_DATA,
    b"allhole": bytes(3 * CS),
    b"empty": b"",
}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(TREE, tmp_path_factory.mktemp("img"))


def Session(built: Built, policy: CachePolicy = CachePolicy.ALWAYS) -> ImageSession:
    return ImageSession(ImageFS(built.bootstrap, built.source, policy=policy))


class ImageSession(_Session):
    fs: ImageFS


@pytest.fixture
def s(image: Built) -> ImageSession:
    return Session(image)


def test_lookup_and_getattr(s: ImageSession, image: Built) -> None:
    ino = s.lookup(b"hello")
    a = s.getattr(ino)
    assert stat.S_ISREG(a["mode"]) and a["mode"] & 0o777 == 0o644
    assert (a["ino"], a["size"], a["nlink"], a["blocks"], a["blksize"]) == (ino, 12, 1, 1, 4096)
    # mtime -1.5 s: the u64 carries an s64, nanoseconds stay positive
    sec = a["mtime"] - (1 << 64) if a["mtime"] >= 1 << 63 else a["mtime"]
    assert sec * 10**9 + a["mtimensec"] == -1_500_000_000
    assert a["atime"] == a["ctime"] == a["mtime"]
    root = s.getattr(1)
    assert stat.S_ISDIR(root["mode"]) and root["ino"] == 1
    assert s.lookup(b"dir/sub/deep") == image.bootstrap.resolve(b"/dir/sub/deep")
    private = s.getattr(s.lookup(b"private"))
    assert (private["uid"], private["gid"]) == (1000, 100)


def test_blocks_count_stored_chunks_so_holes_show(s: ImageSession) -> None:
    assert s.getattr(s.lookup(b"allhole"))["blocks"] == 0
    assert s.getattr(s.lookup(b"sparse"))["blocks"] == 3 * CS // 512  # chunks 1, 4 and 5
    assert s.getattr(s.lookup(b"big"))["blocks"] == (len(BIG_DATA) + 511) // 512


def test_device_numbers_use_the_kernels_encoding(s: ImageSession) -> None:
    null = s.getattr(s.lookup(b"null"))
    assert stat.S_ISCHR(null["mode"]) and null["rdev"] == (1 << 8) | 3
    wide = s.getattr(s.lookup(b"wide"))
    assert wide["rdev"] == encode_rdev(os.makedev(259, 70000))
    assert (wide["rdev"] >> 8) & 0xFFF == 259
    assert (wide["rdev"] & 0xFF) | ((wide["rdev"] >> 12) & ~0xFF) == 70000
    assert decode_rdev(wide["rdev"]) == os.makedev(259, 70000)


def test_lookup_errors(s: ImageSession) -> None:
    neg = entry_out(s.call(Opcode.LOOKUP, cstr(b"missing")).payload)
    assert neg[ENTRY_NODEID] == 0 and neg[2] == 86400  # the miss is cached like a hit
    assert s.call(Opcode.LOOKUP, cstr(b"x"), nodeid=s.lookup(b"hello")).error == errno.ENOTDIR
    assert s.call(Opcode.LOOKUP, cstr(b"x"), nodeid=10**6).error == errno.ESTALE
    assert s.call(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0), nodeid=0).error == errno.ESTALE


def test_no_negative_caching_without_caching(image: Built) -> None:
    s = Session(image, CachePolicy.NEVER)
    assert s.call(Opcode.LOOKUP, cstr(b"missing")).error == errno.ENOENT
    e = entry_out(s.call(Opcode.LOOKUP, cstr(b"hello")).payload)
    assert e[2:6] == (0, 0, 0, 0)
    _fh, oflags, _ = abi.OPEN_OUT.unpack(
        s.call(Opcode.OPEN, abi.OPEN_IN.pack(0, 0), nodeid=e[ENTRY_NODEID]).payload
    )
    assert oflags == abi.FOPEN_DIRECT_IO


def test_lookup_counts_forget_and_reset_on_init(s: ImageSession) -> None:
    hello = s.lookup(b"hello")
    s.lookup(b"hello")
    dir_ = s.lookup(b"dir")
    assert s.fs.lookups == {hello: 2, dir_: 1}
    assert s.srv.handle(request(Opcode.FORGET, abi.FORGET_IN.pack(1), nodeid=hello), BIG) is None
    assert s.fs.lookups == {hello: 1, dir_: 1}
    body = (
        abi.BATCH_FORGET_IN.pack(2, 0)
        + abi.FORGET_ONE.pack(hello, 1)
        + abi.FORGET_ONE.pack(dir_, 5)
    )
    assert s.srv.handle(request(Opcode.BATCH_FORGET, body), BIG) is None
    assert s.fs.lookups == {}
    s.lookup(b"big")
    assert parse(s.srv.handle(request(Opcode.INIT, init_body(38, KERNEL_FLAGS)), BIG)).error == 0
    assert s.fs.lookups == {}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_read_whole_files(s: ImageSession, name: bytes) -> None:
    ino = s.lookup(name)
    fh, oflags, _ = abi.OPEN_OUT.unpack(
        s.call(Opcode.OPEN, abi.OPEN_IN.pack(os.O_RDONLY, 0), nodeid=ino).payload
    )
    assert oflags == abi.FOPEN_KEEP_CACHE
    assert s.read(ino, 0, 1 << 20).payload == EXPECTED[name]
    assert s.read(ino, len(EXPECTED[name]), 100).payload == b""
    assert s.read(ino, 1 << 50, 100).payload == b""
    assert s.call(Opcode.RELEASE, abi.RELEASE_IN.pack(fh, 0, 0, 0), nodeid=ino).error == 0


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from([b"big", b"sparse", b"allhole"]),
    offset=st.integers(0, 6 * CS),
    size=st.integers(0, 3 * CS),
)
def test_read_any_range(image: Built, name: bytes, offset: int, size: int) -> None:
    s = _shared(image)
    ino = s.lookup(name)
    assert s.read(ino, offset, size).payload == EXPECTED[name][offset : offset + size]


_sessions: dict[int, ImageSession] = {}


def _shared(image: Built) -> ImageSession:
    # One session per image across hypothesis examples (fixtures are not reset per example).
    return _sessions.setdefault(id(image), Session(image))


def test_holes_cost_no_chunk_reads(image: Built) -> None:
    s = Session(image)
    ino = s.lookup(b"allhole")
    before = image.source.reads
    assert s.read(ino, 0, 3 * CS).payload == bytes(3 * CS)
    assert image.source.reads == before


def test_read_errors(s: ImageSession) -> None:
    assert s.read(1, 0, 10).error == errno.EISDIR
    assert s.read(s.lookup(b"link"), 0, 10).error == errno.EINVAL
    assert s.read(s.lookup(b"null"), 0, 10).error == errno.EINVAL


def test_open_refuses_writing_and_directories(s: ImageSession) -> None:
    ino = s.lookup(b"hello")
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        assert s.call(Opcode.OPEN, abi.OPEN_IN.pack(flags, 0), nodeid=ino).error == errno.EROFS
    assert s.call(Opcode.OPEN, abi.OPEN_IN.pack(0, 0), nodeid=1).error == errno.EISDIR
    r = s.call(Opcode.OPENDIR, abi.OPEN_IN.pack(0, 0), nodeid=1)
    assert abi.OPEN_OUT.unpack(r.payload)[1] & abi.FOPEN_CACHE_DIR
    assert s.call(Opcode.OPENDIR, abi.OPEN_IN.pack(0, 0), nodeid=ino).error == errno.ENOTDIR


def test_readlink(s: ImageSession) -> None:
    assert s.call(Opcode.READLINK, nodeid=s.lookup(b"link")).payload == b"hello"
    assert s.call(Opcode.READLINK, nodeid=s.lookup(b"hello")).error == errno.EINVAL


def _list(s: ImageSession, ino: int, size: int, plus: bool) -> list:  # type: ignore[type-arg]
    op = Opcode.READDIRPLUS if plus else Opcode.READDIR
    out, offset = [], 0
    while True:
        r = s.call(op, read_in(0, offset, size), nodeid=ino)
        assert r.error == 0 and len(r.payload) <= size
        batch = dirents(r.payload, plus)
        if not batch:
            return out
        out += batch
        offset = batch[-1].off


@pytest.mark.parametrize("size", [4096, 300])
def test_readdir(s: ImageSession, image: Built, size: int) -> None:
    d = s.lookup(b"dir")
    got = _list(s, d, size, plus=False)
    assert [e.name for e in got] == [b".", b"..", *sorted([*DIR_NAMES, b"sub"])]
    assert (got[0].ino, got[1].ino) == (d, 1)
    kinds = {e.name: e.type for e in got}
    assert kinds[b"sub"] == stat.S_IFDIR >> 12 and kinds[DIR_NAMES[0]] == stat.S_IFREG >> 12
    for e in got[2:]:
        assert image.bootstrap.lookup(d, e.name) == e.ino
    sub = s.lookup(b"dir/sub")
    assert [(e.name, e.ino) for e in _list(s, sub, 4096, False)][:2] == [(b".", sub), (b"..", d)]
    assert _list(s, 1, 4096, False)[1].ino == 1  # the root's parent is itself


def test_readdir_past_the_end_and_of_a_file(s: ImageSession) -> None:
    assert s.call(Opcode.READDIR, read_in(0, 10**9, 4096), nodeid=1).payload == b""
    r = s.call(Opcode.READDIR, read_in(0, 0, 4096), nodeid=s.lookup(b"hello"))
    assert r.error == errno.ENOTDIR


@pytest.mark.parametrize("size", [8192, 500])
def test_readdirplus_entries_count_as_lookups(s: ImageSession, size: int) -> None:
    d = s.lookup(b"dir")
    got = _list(s, d, size, plus=True)
    assert len(got) == 2 + len(DIR_NAMES) + 1
    for e in got[2:]:
        assert e.entry[ENTRY_NODEID] == e.ino == attr_of_entry(e.entry)["ino"]
        assert s.fs.lookups[e.ino] == 1
    assert got[0].entry[ENTRY_NODEID] == 0 and got[1].entry[ENTRY_NODEID] == 0
    assert attr_of_entry(got[5].entry)["size"] == len(got[5].name)


def test_xattrs(s: ImageSession) -> None:
    ino = s.lookup(b"hello")
    get = abi.GETXATTR_IN.pack
    assert s.call(Opcode.GETXATTR, get(10, 0) + cstr(b"user.greeting"), nodeid=ino).payload == b"hi"
    assert u32(s.call(Opcode.GETXATTR, get(0, 0) + cstr(b"user.long"), nodeid=ino).payload) == 300
    r = s.call(Opcode.GETXATTR, get(299, 0) + cstr(b"user.long"), nodeid=ino)
    assert r.error == errno.ERANGE
    r = s.call(Opcode.GETXATTR, get(10, 0) + cstr(b"user.nope"), nodeid=ino)
    assert r.error == errno.ENODATA
    names = s.call(Opcode.LISTXATTR, get(100, 0), nodeid=ino).payload
    assert names == b"user.greeting\0user.long\0"
    assert u32(s.call(Opcode.LISTXATTR, get(0, 0), nodeid=1).payload) == 0


def _oracle(data_chunks: set[int], size: int, offset: int, whence: int) -> int:
    """SEEK_DATA / SEEK_HOLE by brute force over the chunk map (-errno on error)."""
    if offset >= size:
        return -errno.ENXIO
    for pos in range(offset, size):
        if (pos // CS in data_chunks) == (whence == abi.SEEK_DATA):
            return pos
    return size if whence == abi.SEEK_HOLE else -errno.ENXIO


@pytest.mark.parametrize(
    ("name", "chunks"),
    [(b"sparse", {1, 4, 5}), (b"allhole", set()), (b"big", {0, 1, 2, 3}), (b"empty", set())],
)
def test_lseek_data_and_hole(s: ImageSession, name: bytes, chunks: set[int]) -> None:
    ino = s.lookup(name)
    size = len(EXPECTED[name])
    for offset in sorted(
        {0, 1, CS - 1, CS, CS + 1, 2 * CS, 3 * CS + 7, 4 * CS, size - 1, size, size + 1}
    ):
        if offset < 0:
            continue
        for whence in (abi.SEEK_DATA, abi.SEEK_HOLE):
            assert s.lseek(ino, offset, whence) == _oracle(chunks, size, offset, whence), (
                offset,
                whence,
            )
    assert s.lseek(1, 0, abi.SEEK_DATA) == -errno.EISDIR


def test_statfs(s: ImageSession, image: Built) -> None:
    st_ = abi.STATFS_OUT.unpack(s.call(Opcode.STATFS).payload)
    blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, _ = st_
    assert (bfree, bavail, ffree, bsize, namelen, frsize) == (0, 0, 0, 4096, 255, 4096)
    assert files == image.bootstrap.inode_count and blocks > 0


@pytest.mark.parametrize(
    ("path", "mask", "uid", "gid", "code"),
    [
        (b"private", os.R_OK, 1000, 5, 0),
        (b"private", os.R_OK, 7, 100, 0),
        (b"private", os.R_OK, 7, 7, errno.EACCES),
        (b"private", os.X_OK, 1000, 5, errno.EACCES),
        (b"private", os.W_OK, 1000, 5, errno.EROFS),
        (b"private", os.F_OK, 7, 7, 0),
        (b"hello", os.X_OK, 0, 0, errno.EACCES),
        (b"big", os.X_OK, 0, 0, 0),
        (b"dir", os.X_OK | os.R_OK, 0, 0, 0),
        (b"dir", os.X_OK | os.R_OK, 7, 7, 0),
    ],
)
def test_access(s: ImageSession, path: bytes, mask: int, uid: int, gid: int, code: int) -> None:
    ino = s.lookup(path)
    assert (
        s.call(Opcode.ACCESS, abi.ACCESS_IN.pack(mask, 0), nodeid=ino, uid=uid, gid=gid).error
        == code
    )


def test_mutations_are_erofs(s: ImageSession) -> None:
    assert s.call(Opcode.MKDIR, abi.MKDIR_IN.pack(0o755, 0) + cstr(b"new")).error == errno.EROFS
    body = abi.CREATE_IN.pack(os.O_CREAT | os.O_WRONLY, 0o644, 0, 0) + cstr(b"new")
    assert s.call(Opcode.CREATE, body).error == errno.EROFS
    assert s.call(Opcode.UNLINK, cstr(b"hello")).error == errno.EROFS
    body = abi.SETATTR_IN.pack(abi.FATTR_SIZE, *[0] * 15)
    assert s.call(Opcode.SETATTR, body, nodeid=s.lookup(b"hello")).error == errno.EROFS


def test_corrupt_chunk_is_eio_naming_blob_and_chunk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    built = build({b"a": File(_pattern(2 * CS, 3)), b"b": File(b"fine")}, tmp_path)
    s = Session(built)
    a = s.lookup(b"a")
    bad_index = built.bootstrap.file_chunks(a)[1][1]
    c = built.bootstrap.chunk(bad_index)
    raw = bytearray(built.blob_path.read_bytes())
    raw[c.compressed_offset + c.compressed_size // 2] ^= 0xFF
    built.blob_path.write_bytes(bytes(raw))
    with caplog.at_level(logging.ERROR):
        assert s.read(a, CS + 10, 10).error == errno.EIO
    msg = caplog.text
    assert built.bootstrap.blobs[0].digest in msg and f"chunk {bad_index}" in msg
    assert s.read(a, 0, 10).payload == _pattern(2 * CS, 3)[:10]  # other chunks still serve
    assert s.read(s.lookup(b"b"), 0, 10).payload == b"fine"


class ShortSource:
    def __init__(self, inner: object) -> None:
        self.inner = inner

    def read_chunk(self, chunk_index: int) -> bytes:
        return b"short"


class DownSource:
    def read_chunk(self, chunk_index: int) -> bytes:
        raise BackendError("registry unreachable")


@pytest.mark.parametrize("source", [ShortSource(None), DownSource()])
def test_bad_chunk_sources_give_eio(image: Built, source: object) -> None:
    fs = ImageFS(image.bootstrap, source)  # type: ignore[arg-type]
    srv = Server(fs)
    parse(srv.handle(request(Opcode.INIT, init_body()), BIG))
    ino = image.bootstrap.resolve(b"/big")
    assert ino is not None
    r = parse(srv.handle(request(Opcode.READ, read_in(0, 0, 4096), nodeid=ino), BIG))
    assert r.error == errno.EIO


@pytest.fixture(scope="module")
def store(image: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChunkStore]:
    cs = ChunkStore.from_bootstrap(
        image.bootstrap,
        [LocalFsBackend(image.blob_path.parent)],
        CacheDir(tmp_path_factory.mktemp("cache")),
    )
    yield cs
    cs.close()


def test_over_the_real_chunk_store(image: Built, store: ChunkStore) -> None:
    s = ImageSession(ImageFS(image.bootstrap, store))
    for name, data in EXPECTED.items():
        ino = s.lookup(name)
        assert s.read(ino, 0, 1 << 20).payload == data
        for off, size in ((1, 10), (CS - 3, 7), (2 * CS - 1, CS + 2), (max(len(data) - 1, 0), 5)):
            assert s.read(ino, off, size).payload == data[off : off + size], (name, off, size)
    # After the first pass every chunk is cached: small reads come straight from the cache
    # file (cache_location), never through read_chunk again.
    fetched = store.metrics.hits
    ino = s.lookup(b"big")
    assert s.read(ino, 5, 100).payload == BIG_DATA[5:105]
    assert store.metrics.hits == fetched


@settings(max_examples=120, deadline=None)
@given(
    name=st.sampled_from([b"big", b"sparse", b"allhole", b"hello", b"empty"]),
    offset=st.integers(0, 6 * CS),
    size=st.integers(0, 3 * CS),
    seg=st.sampled_from([1, 7, 4096, 1 << 20]),
)
def test_handle_into_gathers_what_handle_returns(
    image: Built, store: ChunkStore, name: bytes, offset: int, size: int, seg: int
) -> None:
    s = _store_session(image, store)
    ino = s.lookup(name)
    raw = request(Opcode.READ, read_in(0, offset, size), nodeid=ino, unique=9)
    chain = BufferChain(raw, 16 + size + 100, seg)
    n = s.srv.handle_into(chain)
    assert bytes(chain.buf[:n]) == s.srv.handle(raw, 16 + size + 100)
    assert parse(bytes(chain.buf[:n])).payload == EXPECTED[name][offset : offset + size]


_store_sessions: dict[int, ImageSession] = {}


def _store_session(image: Built, store: ChunkStore) -> ImageSession:
    s = _store_sessions.get(id(store))
    if s is None:
        s = _store_sessions[id(store)] = ImageSession(ImageFS(image.bootstrap, store))
        s.srv.vectored_min = 1  # every READ gathered, whatever its size
    return s


class _CountingRanges(ImageFS):
    calls = 0

    def read_ranges(self, ino, fh, offset, size):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().read_ranges(ino, fh, offset, size)


def test_handle_into_copies_cached_chunks_from_the_cache_file(
    image: Built, store: ChunkStore
) -> None:
    fs = _CountingRanges(image.bootstrap, store)
    s = ImageSession(fs)
    ino = s.lookup(b"big")
    s.read(ino, 0, len(BIG_DATA))  # everything cached
    parts = fs.read_ranges(ino, 0, 100, 2 * CS)
    assert parts is not None and len(parts) == 3
    assert all(isinstance(p, FileRange) for p in parts)
    hits, calls = store.metrics.hits, fs.calls
    s.srv.vectored_min = 2 * CS
    raw = request(Opcode.READ, read_in(0, 100, 2 * CS), nodeid=ino)
    chain = BufferChain(raw, 1 << 16)
    n = s.srv.handle_into(chain)
    assert parse(bytes(chain.buf[:n])).payload == BIG_DATA[100 : 100 + 2 * CS]
    assert fs.calls == calls + 1  # gathered...
    assert store.metrics.hits == hits  # ...straight from the cache file, not via read_chunk
    raw = request(Opcode.READ, read_in(0, 100, 2 * CS - 1), nodeid=ino)
    s.srv.handle_into(BufferChain(raw, 1 << 16))
    assert fs.calls == calls + 1  # below vectored_min: copied through bytes


class _BadRanges(ImageFS):
    def read_ranges(self, ino, fh, offset, size):  # type: ignore[no-untyped-def]
        fd = os.open("/dev/null", os.O_RDONLY)
        os.close(fd)
        return [FileRange(fd, 0, size)]  # a closed descriptor: preadv fails


def test_handle_into_answers_eio_when_gathering_fails(image: Built) -> None:
    fs = _BadRanges(image.bootstrap, image.source)
    srv = Server(fs, vectored_min=0)
    parse(srv.handle(request(Opcode.INIT, init_body()), BIG))
    raw = request(Opcode.READ, read_in(0, 0, 100), nodeid=image.bootstrap.resolve(b"/big") or 0)
    chain = BufferChain(raw, 4096)
    n = srv.handle_into(chain)
    assert n == 16 and parse(bytes(chain.buf[:n])).error == errno.EIO


def test_handle_into_without_ranges_and_for_other_ops(s: ImageSession) -> None:
    for raw in (
        request(Opcode.READ, read_in(0, 3, 5), nodeid=s.lookup(b"hello")),  # image.source: no
        request(Opcode.LOOKUP, cstr(b"hello"), unique=4),
        request(Opcode.FORGET, abi.FORGET_IN.pack(1), nodeid=2),
    ):
        chain = BufferChain(raw, 4096)
        n = s.srv.handle_into(chain)
        want = s.srv.handle(raw, 4096)
        assert (bytes(chain.buf[:n]) if n else None) == want
