"""Lying bootstraps: the C path either answers exactly as Python does or leaves the request
to Python; it never reads outside the mapping (a crash here would kill the test run).

Only section bytes are changed, so ``Bootstrap.open`` (which checks the header digest, not
the sections) accepts the image, as a daemon that skips ``verify()`` would.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fastpath.rig import Req, Rig
from tests.fastpath.test_fastpath import (
    dir_req,
    getattr_req,
    lookup_req,
    opendir_req,
    read_req,
    releasedir_req,
)
from tests.fuse import wire
from tests.fuse.images import CS, Built
from virtiofsd_nydus.format import layout as L
from virtiofsd_nydus.format.reader import Bootstrap
from virtiofsd_nydus.fuse import abi
from virtiofsd_nydus.fuse.abi import Opcode
from virtiofsd_nydus.storage import CacheDir, ChunkStore, LocalFsBackend

Mutation = Callable[[bytearray, Bootstrap], None]


@pytest.fixture(scope="module")
def shared_cache(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CacheDir]:
    """A cache warmed through the sound image; corrupt images reuse its verified bits."""
    cache = CacheDir(tmp_path_factory.mktemp("cache"))
    bs = built.bootstrap
    store = ChunkStore.from_bootstrap(bs, [LocalFsBackend(built.blob_path.parent)], cache)
    store.ensure_range(range(bs.chunk_count))
    store.close()
    yield cache
    cache.close()


def requests_for(sound: Bootstrap) -> list[Req]:
    """Requests shaped by the sound image: every inode, name and a few reads per file."""
    reqs = [getattr_req(i) for i in range(0, sound.inode_count + 2)]
    for path, ino in sound.walk():
        node = sound.inode(ino)
        if node.is_dir:
            names = [n for n, _ in sound.readdir(ino)][:40]
            reqs.extend(lookup_req(ino, n) for n in names)
            reqs.append(lookup_req(ino, b"missing-name-xyz"))
            reqs += [opendir_req(ino), releasedir_req(ino)]
            for op in (Opcode.READDIR, Opcode.READDIRPLUS):
                reqs += [dir_req(op, ino, off) for off in (0, 2, 7)]
        elif node.is_reg:
            reqs.append(Req(wire.request(Opcode.OPEN, abi.OPEN_IN.pack(0, 0), nodeid=ino)))
            for off in (0, CS - 1, 3 * CS, node.size - 1, 1 << 40):
                reqs.append(read_req(ino, max(off, 0), 2 * CS + 3))
        del path
    return reqs


def _set(buf: bytearray, bs: Bootstrap, kind: int, index: int, off: int, fmt: str, v: int) -> None:
    sec = bs.sections[kind]
    struct.pack_into("<" + fmt, buf, sec.offset + index * sec.record_size + off, v)


def _each(kind: int, off: int, fmt: str, value: Callable[[int], int], step: int = 1) -> Mutation:
    """Set field (off, fmt) of every step-th record of a section to value(index)."""

    def mutate(buf: bytearray, bs: Bootstrap) -> None:
        for i in range(0, bs.sections[kind].count, step):
            _set(buf, bs, kind, i, off, fmt, value(i))

    return mutate


def _root(off: int, fmt: str, v: int) -> Mutation:
    return lambda buf, bs: _set(buf, bs, L.Kind.INODES, 0, off, fmt, v)


def _forty_chunks_far(buf: bytearray, bs: Bootstrap) -> None:
    ino = bs.resolve(b"/forty")
    assert ino is not None
    _set(buf, bs, L.Kind.INODES, ino - 1, 48, "Q", 1 << 40)


INO, D, FC, C = L.Kind.INODES, L.Kind.DIRENTS, L.Kind.FILE_CHUNKS, L.Kind.CHUNKS
MUTATIONS: dict[str, Mutation] = {
    "root entries out of range": _root(56, "I", 0xFFFFFFF0),
    "root entries start past the end": _root(48, "Q", 1 << 62),
    "dir entry names a missing inode": _each(D, 16, "I", lambda i: 1 << 31),
    "dir entry names inode 0": _each(D, 16, "I", lambda i: 0),
    "names outside the pool": _each(D, 8, "Q", lambda i: (1 << 63) + i),
    "entries unsorted": lambda buf, bs: _swap_dirents(buf, bs),
    "file chunks out of range": _forty_chunks_far,
    "chunk index out of range": _each(FC, 8, "I", lambda i: 0xFFFFFFFF, step=3),
    "chunk offsets unaligned and unsorted": _each(FC, 0, "Q", lambda i: (i * 7919) % (1 << 20)),
    "chunk sizes zero": _each(C, 52, "I", lambda i: 0, step=2),
    "chunk sizes short": _each(C, 52, "I", lambda i: 5),
    "chunk slots misaligned": _each(C, 40, "Q", lambda i: i * CS + 1, step=2),
    "chunks in a missing blob": _each(C, 56, "I", lambda i: 1 + i),
    "chunks past the blob end": _each(C, 40, "Q", lambda i: (1 << 30) * CS),
    "raw chunks of the wrong size": _each(C, 60, "I", lambda i: 0),
    "huge file sizes": _each(INO, 16, "Q", lambda i: (1 << 64) - 1 - i),
    "files become directories": _each(INO, 0, "I", lambda i: 0o40755),
    "directories become files": _each(INO, 0, "I", lambda i: 0o100644),
}


def _swap_dirents(buf: bytearray, bs: Bootstrap) -> None:
    sec = bs.sections[L.Kind.DIRENTS]
    rs = sec.record_size
    for i in range(0, sec.count - 1, 2):
        a, b = sec.offset + i * rs, sec.offset + (i + 1) * rs
        buf[a : a + rs], buf[b : b + rs] = buf[b : b + rs], buf[a : a + rs]


def run_against(built: Built, cache: CacheDir, data: bytes, reqs: list[Req]) -> int:
    """Every C reply equals Python's; returns how many C served."""
    bs = Bootstrap.from_bytes(data)
    rig = Rig(bs, built.blob_path.parent, cache, warm=False)
    try:
        res = rig.run(reqs)
    finally:
        rig.close()
    for i, r in enumerate(res):
        assert r.reply == r.expected, f"request {i} (served={r.served})"
    return sum(r.served for r in res)


def _sound_bytes(built: Built) -> bytes:
    return Path(built.bootstrap.name).read_bytes()


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_lying_records(built: Built, shared_cache: CacheDir, name: str) -> None:
    sound = built.bootstrap
    buf = bytearray(_sound_bytes(built))
    MUTATIONS[name](buf, sound)
    run_against(built, shared_cache, bytes(buf), requests_for(sound))


def test_random_byte_flips(built: Built, shared_cache: CacheDir) -> None:
    sound = built.bootstrap
    reqs = requests_for(sound)
    rnd = random.Random(1234)
    kinds = [L.Kind.INODES, L.Kind.DIRENTS, L.Kind.FILE_CHUNKS, L.Kind.CHUNKS, L.Kind.STRINGS]
    base = _sound_bytes(built)
    for _ in range(12):
        buf = bytearray(base)
        for _ in range(rnd.randint(1, 40)):
            sec = sound.sections[rnd.choice(kinds)]
            if sec.size:
                buf[sec.offset + rnd.randrange(sec.size)] = rnd.randrange(256)
        run_against(built, shared_cache, bytes(buf), reqs)


def test_sound_image_is_served(built: Built, shared_cache: CacheDir) -> None:
    """The control: without corruption, C serves nearly everything these requests ask."""
    reqs = requests_for(built.bootstrap)
    served = run_against(built, shared_cache, _sound_bytes(built), reqs)
    assert served >= len(reqs) - 10  # the two stale GETATTRs and reads past huge offsets


def test_context_with_lying_sections_is_refused(built: Built, tmp_path: Path) -> None:
    from virtiofsd_nydus._native import lib

    rig = Rig(built.bootstrap, built.blob_path.parent, tmp_path / "c", warm=False)
    try:
        c = rig.fp._c
        for field, value in (("count", 1 << 60), ("offset", 1 << 40), ("record_size", 8)):
            saved = getattr(c.inodes, field)
            setattr(c.inodes, field, value)
            assert lib.vn_fs_check(c) != 0 and c.valid == 0
            setattr(c.inodes, field, saved)
        res = rig.run([getattr_req(1)])
        assert not res[0].served and res[0].reply == res[0].expected
        assert rig.fp.stats()["fallback_disabled"] == 1
        assert lib.vn_fs_check(c) == 0
        assert rig.run([getattr_req(1)])[0].served
    finally:
        rig.close()
