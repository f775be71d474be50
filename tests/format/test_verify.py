"""What open(), verify() and verify_merkle() catch, and what a newer minor version may add."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from virtiofsd_nydus.errors import ImageError
from virtiofsd_nydus.format import layout as L
from virtiofsd_nydus.format.reader import Bootstrap
from virtiofsd_nydus.format.writer import _assemble, write_bootstrap

from .helpers import BLOB, RAW_BLOB, reseal
from .test_roundtrip import sample_image


@pytest.fixture(scope="module")
def data() -> bytes:
    return write_bootstrap(sample_image())


def section(data: bytes, kind: int) -> L.Section:
    return Bootstrap.from_bytes(data).sections[kind]


def flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    buf = bytearray(data)
    buf[pos] ^= 1 << bit
    return bytes(buf)


def inode_at(bs: Bootstrap, path: bytes) -> int:
    ino = bs.resolve(path)
    assert ino is not None
    return bs.sections[L.Kind.INODES].offset + (ino - 1) * L.INODE.size


# Fields of the inode record the Merkle tree covers: mode, uid, gid, nlink, size, rdev,
# mtime_sec, mtime_nsec and the stored digest itself.
COVERED_INODE_FIELDS = [0, 4, 8, 12, 16, 24, 32, 40, 72, 103]


@pytest.mark.parametrize("path", [b"/etc/passwd", b"/etc", b"/bin/sh", b"/dev/null", b"/dev/fifo"])
@pytest.mark.parametrize("field", COVERED_INODE_FIELDS)
def test_merkle_catches_inode_changes(data: bytes, path: bytes, field: int) -> None:
    pos = inode_at(Bootstrap.from_bytes(data), path) + field
    bs = Bootstrap.from_bytes(reseal(flip(data, pos)))
    bs.verify()  # the checksums were recomputed: only the Merkle tree can tell
    with pytest.raises(ImageError):
        bs.verify_merkle()


def test_merkle_checks_directory_parents(data: bytes) -> None:
    pos = inode_at(Bootstrap.from_bytes(data), b"/etc") + 44  # parent, used for ".."
    with pytest.raises(ImageError, match="another parent"):
        Bootstrap.from_bytes(reseal(flip(data, pos))).verify_merkle()


def test_merkle_catches_content_changes(data: bytes) -> None:
    bs = Bootstrap.from_bytes(data)
    chunks = bs.sections[L.Kind.CHUNKS].offset
    file_chunks = bs.sections[L.Kind.FILE_CHUNKS].offset
    dirents = bs.sections[L.Kind.DIRENTS]
    strings = bs.sections[L.Kind.STRINGS]
    targets = {
        "chunk digest": chunks + 5,
        "chunk size": chunks + 52,
        "file offset": file_chunks + 16 + 1,
        "chunk index": file_chunks + 8,
        "entry name key": dirents.offset + 3,
        "entry ino": dirents.offset + 16,
        "entry dtype": dirents.offset + 22,
        "entry name length": dirents.offset + 20,
        "first string": strings.offset,
        "last string": strings.offset + strings.count - 1,
        "root digest": 40,
    }
    for what, pos in targets.items():
        bad = Bootstrap.from_bytes(reseal(flip(data, pos, 1)))
        with pytest.raises(ImageError):
            bad.verify_merkle()
            pytest.fail(f"{what}: change not caught")


def test_verify_catches_any_section_byte(data: bytes) -> None:
    bs = Bootstrap.from_bytes(data)
    for sec in bs.sections.values():
        if sec.size:
            for pos in (sec.offset, sec.offset + sec.size - 1):
                with pytest.raises(ImageError, match="digest mismatch"):
                    Bootstrap.from_bytes(flip(data, pos)).verify()


@pytest.mark.parametrize("pos", [0, 9, 13, 20, 24, 33, 50, 100, 130, 200])
def test_open_catches_header_bytes(data: bytes, pos: int) -> None:
    with pytest.raises(ImageError):
        Bootstrap.from_bytes(flip(data, pos))


def test_open_messages(data: bytes, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a bootstrap"):
        Bootstrap.from_bytes(b"X" * 4096)
    with pytest.raises(ImageError, match="too short"):
        Bootstrap.from_bytes(data[:100])
    with pytest.raises(ImageError, match="truncated"):
        Bootstrap.from_bytes(data[:-8])
    with pytest.raises(ImageError, match="version 2"):
        Bootstrap.from_bytes(reseal(data[:8] + struct.pack("<H", 2) + data[10:]))
    with pytest.raises(ImageError, match="unknown flags"):
        Bootstrap.from_bytes(reseal(data[:12] + struct.pack("<I", 4) + data[16:]))
    with pytest.raises(ImageError, match="cannot map"):
        Bootstrap.open(tmp_path / "missing")
    with pytest.raises(ImageError, match="cannot map"):
        Bootstrap.open(tmp_path)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ImageError, match="too short"):
        Bootstrap.open(tmp_path / "empty")


def test_newer_minor_version_is_readable(data: bytes) -> None:
    """A 1.x writer may append fields to records and add section kinds; a 1.0 reader keeps
    working, striding by the stored record size and skipping unknown kinds."""
    old = Bootstrap.from_bytes(data)
    pieces = []
    for sec in old.sections.values():
        body = data[sec.offset : sec.offset + sec.size]
        rec = sec.record_size
        if sec.kind in (L.Kind.INODES, L.Kind.DIRENTS):  # 8 new (zero) bytes per record
            body = b"".join(body[i * rec : (i + 1) * rec] + bytes(8) for i in range(sec.count))
            rec += 8
        pieces.append((sec.kind, rec, body[: rec * sec.count] if rec > 1 else body, sec.count))
    pieces.append((99, 8, b"future!!", 1))
    new_data = bytearray(
        b"".join(_assemble(pieces, old.chunk_size, old.root_digest, [BLOB, RAW_BLOB]))
    )
    new_data[10:12] = struct.pack("<H", 7)  # version 1.7
    new = Bootstrap.from_bytes(reseal(bytes(new_data)))
    new.verify()
    new.verify_merkle()
    assert list(new.walk()) == list(old.walk())
    assert new.inode(5) == old.inode(5)
    assert new.lookup(1, b"etc") == old.lookup(1, b"etc")


def test_python_lookup_fallback(data: bytes) -> None:
    # Big-endian hosts bisect in Python instead of over the key column: same answers.
    fast, slow = Bootstrap.from_bytes(data), Bootstrap.from_bytes(data)
    slow._keys = None
    for _, ino in fast.walk():
        if fast.inode(ino).is_dir:
            for name, child in fast.readdir(ino):
                assert slow.lookup(ino, name) == child
                assert slow.lookup(ino, name + b"!") is None
                assert slow.lookup(ino, name[:-1]) == fast.lookup(ino, name[:-1])
