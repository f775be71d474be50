"""The O(size) checks of a mapped bootstrap: section digests and the Merkle tree.

``merkle_tree`` recomputes each inode's digest from its own record and its children's
*stored* digests, in any order; if every inode matches and the root matches the superblock,
the whole tree is consistent by induction (a cycle would need a hash fixed point). On the way
it checks what lookups and reads rely on and only check lazily: entry names valid, sorted
and unique, name keys and dtypes right, subdirectories' parent fields pointing back, chunk
lists increasing, aligned and correctly sized, every chunk's blob in range. Hot loops unpack
records directly: this runs over every inode.
"""

from __future__ import annotations

import stat
import struct
from typing import TYPE_CHECKING

import blake3

from . import layout as L
from . import merkle

if TYPE_CHECKING:
    from .reader import Bootstrap

_S_IFMT = 0o170000
_SLASH, _NUL = 0x2F, 0  # `int in bytes` is a memchr; `bytes in bytes` is far slower
_CHUNK_DATA = struct.Struct("<32s20xI")  # digest, uncompressed_size (offset 52)
_CHUNK_CHECK = struct.Struct("<48xIII")  # compressed_size, uncompressed_size, blob_index
_CHILD = struct.Struct("<I40xI24x32s")  # an inode's mode, parent and digest
_BAD_NAMES = (b"", b".", b"..")


def sections(bs: Bootstrap) -> None:
    for sec in bs.sections.values():
        view = memoryview(bs._buf)
        try:
            got = blake3.blake3(view[sec.offset : sec.offset + sec.size]).digest()
        finally:
            view.release()
        if got != sec.digest:
            raise bs._bad(f"section kind {sec.kind} digest mismatch")


def merkle_tree(bs: Bootstrap) -> None:
    _chunk_table(bs)
    buf, unpack = bs._buf, L.INODE.unpack_from
    ino_off, ino_rec = bs._ino_off, bs._ino_rec
    for ino in range(1, bs.inode_count + 1):
        (
            mode,
            uid,
            gid,
            nlink,
            size,
            rdev,
            sec,
            nsec,
            _,
            start,
            count,
            xstart,
            xcount,
            _,
            stored,
        ) = unpack(buf, ino_off + (ino - 1) * ino_rec)
        xs = _xattrs(bs, ino, xstart, xcount) if xcount else []
        meta = merkle.metadata(mode, uid, gid, nlink, size, rdev, sec, nsec, xs)
        fmt = mode & _S_IFMT
        if fmt == stat.S_IFREG:
            digest = merkle.file_digest(mode, meta, _file_chunks(bs, ino, size, start, count))
        elif fmt == stat.S_IFDIR:
            digest = merkle.dir_digest(mode, meta, _entries(bs, ino, start, count))
        elif fmt == stat.S_IFLNK:
            if size != count:
                raise bs._bad(f"symlink {ino} size differs from its target length")
            digest = merkle.symlink_digest(mode, meta, bs._string(start, count))
        elif fmt in L.FILE_TYPES:
            digest = merkle.special_digest(mode, meta)
        else:
            raise bs._bad(f"inode {ino} has unknown type in mode {mode:#o}")
        if digest != stored:
            raise bs._bad(f"inode {ino} Merkle digest mismatch")
    root = bs.inode(bs.root_ino)
    if not root.is_dir:
        raise bs._bad("root inode is not a directory")
    if root.digest != bs.root_digest:
        raise bs._bad("root inode digest differs from the superblock's root digest")


def _chunk_table(bs: Bootstrap) -> None:
    buf, unpack, off, rec = bs._buf, _CHUNK_CHECK.unpack_from, bs._c_off, bs._c_rec
    cs, blobs = bs.chunk_size, bs.blob_count
    for i in range(bs.chunk_count):
        csize, usize, blob = unpack(buf, off + i * rec)
        if blob >= blobs or not 0 < usize <= cs or csize == 0:
            raise bs._bad(f"chunk {i}: blob {blob} or sizes {csize}/{usize} out of range")


def _xattrs(bs: Bootstrap, ino: int, start: int, count: int) -> list[tuple[bytes, bytes]]:
    if start + count > bs._x_count:
        raise bs._bad(f"inode {ino} xattrs {start}+{count} out of range")
    out: list[tuple[bytes, bytes]] = []
    for i in range(start, start + count):
        name, voff, vlen = bs._xattr(i)
        if out and name <= out[-1][0]:
            raise bs._bad(f"inode {ino} xattr names unsorted")
        out.append((name, bs._string(voff, vlen)))
    return out


def _file_chunks(
    bs: Bootstrap, ino: int, size: int, start: int, count: int
) -> list[tuple[int, int, bytes]]:
    if start + count > bs._fc_count:
        raise bs._bad(f"file {ino} chunks {start}+{count} out of range")
    buf, cs, n_chunks = bs._buf, bs.chunk_size, bs.chunk_count
    fc_off, fc_rec, c_off, c_rec = bs._fc_off, bs._fc_rec, bs._c_off, bs._c_rec
    fc_unpack, c_unpack = L.FILE_CHUNK.unpack_from, _CHUNK_DATA.unpack_from
    prev, out = -1, []
    for i in range(start, start + count):
        foff, cidx = fc_unpack(buf, fc_off + i * fc_rec)
        if cidx >= n_chunks:
            raise bs._bad(f"file {ino} refers to chunk {cidx} of {n_chunks}")
        digest, usize = c_unpack(buf, c_off + cidx * c_rec)
        if foff <= prev or foff % cs or foff >= size or usize != min(cs, size - foff):
            raise bs._bad(f"file {ino} chunk at {foff} misplaced or of the wrong size")
        out.append((foff, usize, digest))
        prev = foff
    return out


def _entries(bs: Bootstrap, ino: int, start: int, count: int) -> list[tuple[bytes, bytes]]:
    if start + count > bs.dirent_count:
        raise bs._bad(f"directory {ino} entries {start}+{count} out of range")
    buf, de_off, de_rec, unpack = bs._buf, bs._de_off, bs._de_rec, L.DIRENT.unpack_from
    inode_at, n_inodes = _CHILD.unpack_from, bs.inode_count
    ino_off, ino_rec = bs._ino_off, bs._ino_rec
    out: list[tuple[bytes, bytes]] = []
    prev = b""
    for i in range(start, start + count):
        key, noff, cino, nlen, dtype = unpack(buf, de_off + i * de_rec)
        name = bs._string(noff, nlen)
        if name <= prev or name in _BAD_NAMES or _SLASH in name or _NUL in name:
            raise bs._bad(f"directory {ino} has an invalid or unsorted entry {name!r}")
        if key != L.name_key(name):
            raise bs._bad(f"directory {ino} entry {name!r} has a wrong name key")
        if not 0 < cino <= n_inodes:
            raise bs._bad(f"directory {ino} entry {name!r} names inode {cino}")
        mode, parent, digest = inode_at(buf, ino_off + (cino - 1) * ino_rec)
        if mode >> 12 != dtype:
            raise bs._bad(f"directory {ino} entry {name!r} has the wrong type")
        if mode & _S_IFMT == stat.S_IFDIR and parent != ino:  # ".." must lead back here
            raise bs._bad(f"directory {ino} entry {name!r} names another parent")
        out.append((name, digest))
        prev = name
    return out
