"""The Merkle tree over a bootstrap's inodes: one digest rule shared by writer and reader.

Every inode's digest is blake3-256 over a domain prefix naming its kind, its metadata, then
a kind-specific body (chunks, entries, target). A directory's body holds its children's
digests, so the root digest pins the whole tree. The prefix keeps a file's encoding from
ever reading as a directory's (or any other kind's). Inode numbers and on-disk positions are
not hashed: equal subtrees have equal digests, in any image.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Sequence

import blake3

from ..errors import ImageError

_KIND_NAMES = {
    stat.S_IFREG: b"file",
    stat.S_IFDIR: b"dir",
    stat.S_IFLNK: b"symlink",
    stat.S_IFCHR: b"chrdev",
    stat.S_IFBLK: b"blkdev",
    stat.S_IFIFO: b"fifo",
    stat.S_IFSOCK: b"socket",
}
PREFIXES = {fmt: b"vnydus-merkle-v1:" + name + b"\0" for fmt, name in _KIND_NAMES.items()}

_META = struct.Struct("<IIIIQQqII")  # mode uid gid nlink size rdev mtime_s mtime_ns n_xattrs
_LEN32 = struct.Struct("<I")
_COUNT = struct.Struct("<Q")
_FILE_CHUNK = struct.Struct("<QI")  # file_offset, uncompressed_size (then the 32-byte digest)
_NAME_LEN = struct.Struct("<H")


def prefix(mode: int) -> bytes:
    try:
        return PREFIXES[stat.S_IFMT(mode)]
    except KeyError:
        raise ImageError(f"unknown file type in mode {mode:#o}") from None


def metadata(
    mode: int,
    uid: int,
    gid: int,
    nlink: int,
    size: int,
    rdev: int,
    mtime_sec: int,
    mtime_nsec: int,
    xattrs: Sequence[tuple[bytes, bytes]],
) -> bytes:
    """Encode the metadata every kind hashes; ``xattrs`` sorted by name."""
    head = _META.pack(mode, uid, gid, nlink, size, rdev, mtime_sec, mtime_nsec, len(xattrs))
    if not xattrs:
        return head
    parts = [head]
    for name, value in xattrs:
        parts += (_LEN32.pack(len(name)), name, _LEN32.pack(len(value)), value)
    return b"".join(parts)


def file_digest(mode: int, meta: bytes, chunks: Sequence[tuple[int, int, bytes]]) -> bytes:
    """``chunks``: (file_offset, uncompressed_size, chunk digest) in file order."""
    parts = [prefix(mode), meta, _COUNT.pack(len(chunks))]
    for off, usize, digest in chunks:
        parts += (_FILE_CHUNK.pack(off, usize), digest)
    return blake3.blake3(b"".join(parts)).digest()


def dir_digest(mode: int, meta: bytes, entries: Sequence[tuple[bytes, bytes]]) -> bytes:
    """``entries``: (name, child digest) sorted by name bytes."""
    parts = [prefix(mode), meta, _COUNT.pack(len(entries))]
    for name, digest in entries:
        parts += (_NAME_LEN.pack(len(name)), name, digest)
    return blake3.blake3(b"".join(parts)).digest()


def symlink_digest(mode: int, meta: bytes, target: bytes) -> bytes:
    return blake3.blake3(b"".join([prefix(mode), meta, _LEN32.pack(len(target)), target])).digest()


def special_digest(mode: int, meta: bytes) -> bytes:
    """Devices, fifos, sockets: metadata only (a device's rdev is in it)."""
    return blake3.blake3(prefix(mode) + meta).digest()
