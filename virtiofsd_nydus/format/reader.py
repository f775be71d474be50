"""Read a bootstrap in place from a memory mapping (see docs/format.md).

``Bootstrap.open`` validates only the superblock and the section table (O(1) whatever the
image size). Every later access checks the offsets and counts it uses, so a truncated or
corrupt bootstrap raises ImageError, never IndexError, struct.error or an out-of-bounds read.
Section digests are checked by ``verify()``, the Merkle tree by ``verify_merkle()``.
Asking a question that does not fit the inode (``readlink`` of a file) raises LocalError:
check the inode's type first.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, overload

import blake3

from ..errors import ImageError, LocalError
from . import layout as L
from . import model, verify

_S_IFMT = 0o170000
_SLASH, _NUL = 0x2F, 0  # `int in bytes` is a memchr; `bytes in bytes` is far slower
_S_IFDIR = stat.S_IFDIR
_KEY_LEN = L.NAME_KEY_LEN
_MODE = struct.Struct("<I")
_DIR_RANGE = struct.Struct("<QI")  # data_start, data_count at inode offset 48
_HEAD = struct.Struct("<I44xQI")  # an inode's mode, data_start, data_count
_XATTR_RANGE = struct.Struct("<II")  # xattr_start, xattr_count at inode offset 60
_DIRENT = struct.Struct("<QQIH")  # name key, name_off, ino, name_len
_FILE_OFFSET = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_USIZE_AT = 52  # uncompressed_size in a chunk record
_BE_KEY = struct.Struct(">Q").unpack_from
_PAD = bytes(L.NAME_KEY_LEN)
_INODE = L.INODE.unpack_from
_new_tuple = tuple.__new__


class Inode(NamedTuple):
    """An inode record (a tuple: cheap to make on every GETATTR)."""

    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    rdev: int
    mtime_sec: int
    mtime_nsec: int
    parent: int  # directory holding its first entry (the root's is itself)
    data_start: int  # file: first file-chunk record; dir: first dirent; symlink: pool offset
    data_count: int  # file: chunk records; dir: entries; symlink: target length
    xattr_start: int
    xattr_count: int
    flags: int
    digest: bytes  # Merkle digest of the inode (merkle.py)

    @property
    def mtime_ns(self) -> int:
        return self.mtime_sec * 1_000_000_000 + self.mtime_nsec

    @property
    def file_type(self) -> int:
        return self.mode & _S_IFMT

    @property
    def is_dir(self) -> bool:
        return self.mode & _S_IFMT == stat.S_IFDIR

    @property
    def is_reg(self) -> bool:
        return self.mode & _S_IFMT == stat.S_IFREG

    @property
    def is_symlink(self) -> bool:
        return self.mode & _S_IFMT == stat.S_IFLNK


class ChunkInfo(NamedTuple):
    chunk_index: int  # its position in the chunk table
    digest: bytes  # blake3-256 of the uncompressed data
    blob_index: int
    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int
    compressed: bool


@dataclass(frozen=True, slots=True)
class BlobInfo:
    index: int
    digest: str  # "sha256:<hex>", the blob's OCI layer digest
    compressed_size: int
    uncompressed_size: int
    compression: int  # model.Compression


class FileChunks(Sequence[tuple[int, int]]):
    """A file's chunk list, read lazily: (file_offset, chunk_index) in file order."""

    __slots__ = ("_bs", "_count", "_ino", "_start")

    def __init__(self, bs: Bootstrap, ino: int, start: int, count: int) -> None:
        self._bs, self._ino, self._start, self._count = bs, ino, start, count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, i: int) -> tuple[int, int]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, int]]: ...
    def __getitem__(self, i: int | slice) -> tuple[int, int] | list[tuple[int, int]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._count))]
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(i)  # the caller's index, not the image's fault
        return self._bs._file_chunk(self._ino, self._start + i)

    def covering(self, offset: int, length: int) -> list[tuple[int, int]]:
        """The chunks overlapping [offset, offset+length), by binary search. Holes (and
        bytes past the end of the file) have no chunk: they read as zeros."""
        return self._bs._covering(self._ino, self._start, self._count, offset, length)


class Bootstrap:
    """A mapped bootstrap. Use ``Bootstrap.open(path)`` or ``Bootstrap.from_bytes(data)``."""

    def __init__(self, buf: bytes | mmap.mmap, name: str = "<bytes>") -> None:
        self._buf = buf
        self.name = name
        size = len(buf)
        sb = L.Superblock.unpack_from(buf)
        sb.validate(size)
        header = bytearray(buf[: sb.header_size])
        header[L.HEADER_DIGEST_OFFSET : L.HEADER_DIGEST_OFFSET + L.DIGEST_LEN] = bytes(32)
        if blake3.blake3(bytes(header)).digest() != sb.header_digest:
            raise ImageError(f"{name}: superblock/section table digest mismatch (corrupt)")
        self.superblock = sb
        self.sections: dict[int, L.Section] = {}
        for i in range(sb.section_count):
            sec = L.Section.unpack_from(buf, L.SUPERBLOCK_SIZE + i * L.SECTION_SIZE)
            sec.validate(sb.header_size, size)
            if sec.kind in self.sections:
                raise ImageError(f"{name}: section kind {sec.kind} appears twice")
            self.sections[sec.kind] = sec
        missing = [k for k in L.REQUIRED_KINDS if k not in self.sections]
        if missing:
            raise ImageError(f"{name}: required sections {missing} missing")
        s = self.sections
        self.chunk_size = sb.chunk_size
        self.root_ino = sb.root_ino
        self.root_digest = sb.root_digest
        self.inode_count = s[L.Kind.INODES].count
        if not 1 <= self.inode_count <= L.MAX_INODES:
            raise ImageError(f"{name}: inode count {self.inode_count} out of range")
        self.chunk_count = s[L.Kind.CHUNKS].count
        self.blob_count = s[L.Kind.BLOBS].count
        self.dirent_count = s[L.Kind.DIRENTS].count
        self._ino_off, self._ino_rec = s[L.Kind.INODES].offset, s[L.Kind.INODES].record_size
        self._de_off, self._de_rec = s[L.Kind.DIRENTS].offset, s[L.Kind.DIRENTS].record_size
        self._str_off, self._str_len = s[L.Kind.STRINGS].offset, s[L.Kind.STRINGS].count
        self._x_off, self._x_rec = s[L.Kind.XATTRS].offset, s[L.Kind.XATTRS].record_size
        self._x_count = s[L.Kind.XATTRS].count
        fcs = s[L.Kind.FILE_CHUNKS]
        self._fc_off, self._fc_rec, self._fc_count = fcs.offset, fcs.record_size, fcs.count
        self._c_off, self._c_rec = s[L.Kind.CHUNKS].offset, s[L.Kind.CHUNKS].record_size
        self._blobs: list[BlobInfo] | None = None
        # The dirents' name-key column as a strided view of u64s, so that bisect runs in C.
        # (Native order must be little-endian; elsewhere lookup bisects in Python.)
        self._views: list[memoryview] = []
        self._keys: Sequence[int] | None = None
        de = s[L.Kind.DIRENTS]
        if sys.byteorder == "little" and de.record_size % 8 == 0:
            raw = memoryview(buf)[de.offset : de.offset + de.size]
            words = raw.cast("Q")
            self._keys = keys = words[:: de.record_size // 8]
            self._views = [keys, words, raw]

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Bootstrap:
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < L.SUPERBLOCK_SIZE:
                    raise ImageError(f"{path}: {size} bytes, too short for a bootstrap")
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ImageError(f"cannot map bootstrap {path}: {e.strerror or e}") from e
        try:
            return cls(mm, os.fspath(path))
        except BaseException:
            mm.close()
            raise

    @classmethod
    def from_bytes(cls, data: bytes) -> Bootstrap:
        return cls(bytes(data))

    @property
    def mapped(self) -> bool:
        """True if the bytes are a file mapping (``open``), not a copy (``from_bytes``)."""
        return isinstance(self._buf, mmap.mmap)

    def trim(self) -> bool:
        """Drop this process's page-table entries for the whole mapping (MADV_DONTNEED).

        The mapping is shared and read-only, so nothing is lost: the pages stay in the
        page cache and the next access faults them back in (a minor fault, no I/O unless
        the kernel reclaimed them meanwhile). Addresses stay valid, so views of the
        mapping and the C fast path's pointer into it keep working, and other threads may
        read it meanwhile. Bounds the file pages counted in this process's RSS (and OOM
        score). False for a ``from_bytes`` bootstrap or a closed one (nothing to drop).
        """
        buf = self._buf
        if not isinstance(buf, mmap.mmap) or buf.closed:
            return False
        buf.madvise(mmap.MADV_DONTNEED)
        return True

    def close(self) -> None:
        for view in self._views:
            view.release()
        self._views, self._keys = [], None
        if isinstance(self._buf, mmap.mmap):
            self._buf.close()

    def __enter__(self) -> Bootstrap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checked primitives ---------------------------------------------------------------
    def _bad(self, what: str) -> ImageError:
        return ImageError(f"{self.name}: corrupt bootstrap: {what}")

    def _inode_base(self, ino: int) -> int:
        if not 0 < ino <= self.inode_count:
            raise self._bad(f"inode {ino} out of range 1..{self.inode_count}")
        return self._ino_off + (ino - 1) * self._ino_rec

    def _string(self, off: int, length: int) -> bytes:
        if off + length > self._str_len:
            raise self._bad(f"string {off}+{length} outside the {self._str_len}-byte pool")
        p = self._str_off + off
        return self._buf[p : p + length]

    def _dir_range(self, ino: int) -> tuple[int, int]:
        base = self._inode_base(ino)
        if _MODE.unpack_from(self._buf, base)[0] & _S_IFMT != stat.S_IFDIR:
            raise LocalError(f"inode {ino} is not a directory")
        start, count = _DIR_RANGE.unpack_from(self._buf, base + 48)
        if start + count > self.dirent_count:
            raise self._bad(f"directory {ino} entries {start}+{count} out of range")
        return start, count

    def _dirent(self, index: int) -> tuple[bytes, int, int]:
        """(name, ino, dtype) of dirent ``index`` (already range-checked by the caller)."""
        _, noff, cino, nlen, dtype = L.DIRENT.unpack_from(
            self._buf, self._de_off + index * self._de_rec
        )
        return self._string(noff, nlen), cino, dtype

    def _file_chunk(self, ino: int, index: int) -> tuple[int, int]:
        foff, cidx = L.FILE_CHUNK.unpack_from(self._buf, self._fc_off + index * self._fc_rec)
        if cidx >= self.chunk_count:
            raise self._bad(f"inode {ino} refers to chunk {cidx} of {self.chunk_count}")
        return foff, cidx

    # -- inodes and directories -----------------------------------------------------------
    def inode(self, ino: int) -> Inode:
        # tuple.__new__ skips the NamedTuple constructor's Python-level argument handling.
        return _new_tuple(Inode, (ino, *_INODE(self._buf, self._inode_base(ino))))

    def lookup(self, parent: int, name: bytes) -> int | None:
        """The inode of ``name`` in directory ``parent``; None if absent or not a directory."""
        buf = self._buf
        if not 0 < parent <= self.inode_count:
            raise self._bad(f"inode {parent} out of range 1..{self.inode_count}")
        mode, lo, count = _HEAD.unpack_from(buf, self._ino_off + (parent - 1) * self._ino_rec)
        if mode & _S_IFMT != _S_IFDIR or 0 in name:
            return None
        hi = lo + count
        if hi > self.dirent_count:
            raise self._bad(f"directory {parent} entries {lo}+{count} out of range")
        nlen_want = len(name)
        key = _BE_KEY(name + _PAD)[0]  # == layout.name_key(name)
        de_off, de_rec, unpack = self._de_off, self._de_rec, _DIRENT.unpack_from
        keys = self._keys
        if keys is not None:  # narrow [lo, hi) to the entries sharing the key, in C
            lo = bisect_left(keys, key, lo, hi)
            if lo == hi or keys[lo] != key:
                return None
            if nlen_want <= _KEY_LEN:  # the one name this short with this key sorts first
                _, _, cino, nlen = unpack(buf, de_off + lo * de_rec)
                return cino if nlen == nlen_want else None
            hi = bisect_right(keys, key, lo, hi)
        while lo < hi:
            mid = (lo + hi) >> 1
            k, noff, cino, nlen = unpack(buf, de_off + mid * de_rec)
            if k < key:
                lo = mid + 1
            elif k > key:
                hi = mid
            elif nlen_want <= _KEY_LEN and nlen <= _KEY_LEN:
                return cino if nlen == nlen_want else None
            else:
                cand = self._string(noff, nlen)
                if cand < name:
                    lo = mid + 1
                elif cand > name:
                    hi = mid
                else:
                    return cino  # type: ignore[no-any-return]
        return None

    def resolve(self, path: bytes) -> int | None:
        """The inode at absolute or root-relative ``path``; ``.`` and ``..`` are followed."""
        ino: int | None = self.root_ino
        for part in path.split(b"/"):
            if not part or part == b".":
                continue
            assert ino is not None
            if part == b"..":
                node = self.inode(ino)
                if not node.is_dir:
                    return None
                ino = node.parent
                continue
            ino = self.lookup(ino, part)
            if ino is None:
                return None
        return ino

    def dir_entry_count(self, ino: int) -> int:
        return self._dir_range(ino)[1]

    def readdir(self, ino: int, start: int = 0) -> Iterator[tuple[bytes, int]]:
        """(name, ino) from entry ``start`` on, in stored (name) order; entry i is stable."""
        for name, cino, _ in self.readdir_typed(ino, start):
            yield name, cino

    def readdir_typed(self, ino: int, start: int = 0) -> Iterator[tuple[bytes, int, int]]:
        """(name, ino, dtype) where dtype = (mode & S_IFMT) >> 12, as DT_* in dirent.h."""
        first, count = self._dir_range(ino)
        for i in range(first + max(start, 0), first + count):
            yield self._dirent(i)

    def readlink(self, ino: int) -> bytes:
        node = self.inode(ino)
        if not node.is_symlink:
            raise LocalError(f"inode {ino} is not a symlink")
        return self._string(node.data_start, node.data_count)

    # -- xattrs ---------------------------------------------------------------------------
    def _xattr_range(self, ino: int) -> tuple[int, int]:
        start, count = _XATTR_RANGE.unpack_from(self._buf, self._inode_base(ino) + 60)
        if start + count > self._x_count:
            raise self._bad(f"inode {ino} xattrs {start}+{count} out of range")
        return start, count

    def _xattr(self, index: int) -> tuple[bytes, int, int]:
        noff, voff, nlen, vlen = L.XATTR.unpack_from(self._buf, self._x_off + index * self._x_rec)
        return self._string(noff, nlen), voff, vlen

    def xattr_items(self, ino: int) -> list[tuple[bytes, bytes]]:
        """(name, value) pairs in stored order (sorted by name)."""
        start, count = self._xattr_range(ino)
        out = []
        for i in range(start, start + count):
            name, voff, vlen = self._xattr(i)
            out.append((name, self._string(voff, vlen)))
        return out

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return dict(self.xattr_items(ino))

    def listxattr(self, ino: int) -> list[bytes]:
        start, count = self._xattr_range(ino)
        return [self._xattr(i)[0] for i in range(start, start + count)]

    def getxattr(self, ino: int, name: bytes) -> bytes | None:
        lo, count = self._xattr_range(ino)
        hi = lo + count
        while lo < hi:
            mid = (lo + hi) >> 1
            cand, voff, vlen = self._xattr(mid)
            if cand < name:
                lo = mid + 1
            elif cand > name:
                hi = mid
            else:
                return self._string(voff, vlen)
        return None

    # -- file data ------------------------------------------------------------------------
    def file_chunks(self, ino: int) -> FileChunks:
        node = self.inode(ino)
        if not node.is_reg:
            raise LocalError(f"inode {ino} is not a regular file")
        if node.data_start + node.data_count > self._fc_count:
            raise self._bad(f"file {ino} chunks {node.data_start}+{node.data_count} out of range")
        return FileChunks(self, ino, node.data_start, node.data_count)

    def chunks_covering(self, ino: int, offset: int, length: int) -> list[tuple[int, int]]:
        """(file_offset, chunk_index) of the chunks overlapping [offset, offset+length);
        holes have none. O(log chunks + chunks returned), no per-chunk objects."""
        mode, start, count = _HEAD.unpack_from(self._buf, self._inode_base(ino))
        if mode & _S_IFMT != stat.S_IFREG:
            raise LocalError(f"inode {ino} is not a regular file")
        if start + count > self._fc_count:
            raise self._bad(f"file {ino} chunks {start}+{count} out of range")
        return self._covering(ino, start, count, offset, length)

    def _covering(
        self, ino: int, start: int, count: int, offset: int, length: int
    ) -> list[tuple[int, int]]:
        if length <= 0 or count == 0:
            return []
        buf, base, rec, unpack = self._buf, self._fc_off, self._fc_rec, _FILE_OFFSET.unpack_from
        first = offset - offset % self.chunk_size  # only a chunk starting here may reach in
        lo, hi = start, start + count
        while lo < hi:
            mid = (lo + hi) >> 1
            if unpack(buf, base + mid * rec)[0] < first:
                lo = mid + 1
            else:
                hi = mid
        end, out, n_chunks = offset + length, [], self.chunk_count
        for i in range(lo, start + count):
            foff, cidx = L.FILE_CHUNK.unpack_from(buf, base + i * rec)
            if foff >= end:
                break
            if cidx >= n_chunks:
                raise self._bad(f"inode {ino} refers to chunk {cidx} of {n_chunks}")
            if foff < offset:  # a short last chunk may end before offset
                at = self._c_off + cidx * self._c_rec + _USIZE_AT
                if foff + _U32.unpack_from(buf, at)[0] <= offset:
                    continue
            out.append((foff, cidx))
        return out

    def chunk(self, index: int) -> ChunkInfo:
        if not 0 <= index < self.chunk_count:
            raise self._bad(f"chunk {index} out of range 0..{self.chunk_count - 1}")
        d, coff, uoff, csize, usize, blob, flags = L.CHUNK.unpack_from(
            self._buf, self._c_off + index * self._c_rec
        )
        if blob >= self.blob_count:
            raise self._bad(f"chunk {index} refers to blob {blob} of {self.blob_count}")
        if not 0 < usize <= self.chunk_size or csize == 0:
            raise self._bad(f"chunk {index} has sizes {csize}/{usize}")
        return ChunkInfo(index, d, blob, coff, csize, uoff, usize, bool(flags & 1))

    @property
    def blobs(self) -> list[BlobInfo]:
        if self._blobs is None:
            sec = self.sections[L.Kind.BLOBS]
            out = []
            for i in range(sec.count):
                d, csize, usize, comp, _ = L.BLOB.unpack_from(
                    self._buf, sec.offset + i * sec.record_size
                )
                out.append(BlobInfo(i, "sha256:" + d.hex(), csize, usize, comp))
            self._blobs = out
        return self._blobs

    def prefetch_inodes(self) -> list[int]:
        sec = self.sections[L.Kind.PREFETCH]
        out = []
        for i in range(sec.count):
            (ino,) = L.PREFETCH.unpack_from(self._buf, sec.offset + i * sec.record_size)
            if not 0 < ino <= self.inode_count:
                raise self._bad(f"prefetch entry {i} names inode {ino}")
            out.append(ino)
        return out

    # -- whole-image walks ----------------------------------------------------------------
    def walk(self) -> Iterator[tuple[bytes, int]]:
        """(path, ino) depth-first, pre-order, entries in name order; root is b"/"."""
        if not self.inode(self.root_ino).is_dir:
            raise self._bad("root inode is not a directory")
        yield b"/", self.root_ino
        seen = {self.root_ino}
        stack: list[tuple[bytes, Iterator[tuple[bytes, int, int]]]] = [
            (b"", self.readdir_typed(self.root_ino))
        ]
        while stack:
            prefix, it = stack[-1]
            entry = next(it, None)
            if entry is None:
                stack.pop()
                continue
            name, cino, _ = entry
            if not name or name in (b".", b"..") or _SLASH in name or _NUL in name:
                raise self._bad(f"invalid entry name {name!r} under {prefix or b'/'!r}")
            path = prefix + b"/" + name
            yield path, cino
            if _MODE.unpack_from(self._buf, self._inode_base(cino))[0] & _S_IFMT == _S_IFDIR:
                if cino in seen:
                    raise self._bad(f"directory {cino} reachable twice (at {path!r})")
                seen.add(cino)
                stack.append((path, self.readdir_typed(cino)))

    def verify(self) -> None:
        """Check every section against its digest in the (already checked) header. O(size).
        Reads the whole mapping, so it trims it afterwards (see ``trim``)."""
        try:
            verify.sections(self)
        finally:
            self.trim()

    def verify_merkle(self) -> None:
        """Recompute every inode's digest and the root's; check the invariants lookups and
        reads rely on. O(image). See format/verify.py. Trims the mapping afterwards."""
        try:
            verify.merkle_tree(self)
        finally:
            self.trim()

    def to_image(self) -> model.Image:
        """Rebuild the model (hard links become one shared Node). O(image)."""
        blobs = [
            model.Blob(b.digest, b.compressed_size, b.uncompressed_size, b.compression)
            for b in self.blobs
        ]
        chunks: dict[int, model.Chunk] = {}
        nodes: dict[int, model.Node] = {}
        paths: dict[int, bytes] = {}

        def node_of(ino: int) -> model.Node:
            got = nodes.get(ino)
            if got is not None:
                return got
            i = self.inode(ino)
            n = model.Node(
                mode=i.mode,
                uid=i.uid,
                gid=i.gid,
                mtime_ns=i.mtime_ns,
                size=i.size,
                rdev=i.rdev,
                xattrs=self.xattrs(ino),
            )
            if i.is_dir:
                n.children = {}
            elif i.is_symlink:
                n.link_target = self.readlink(ino)
            elif i.is_reg:
                for foff, cidx in self.file_chunks(ino):
                    c = chunks.get(cidx)
                    if c is None:
                        ci = self.chunk(cidx)
                        c = chunks[cidx] = model.Chunk(
                            ci.digest,
                            ci.blob_index,
                            ci.compressed_offset,
                            ci.compressed_size,
                            ci.uncompressed_offset,
                            ci.uncompressed_size,
                            ci.compressed,
                        )
                    n.chunks.append(model.FileChunk(foff, c))
            nodes[ino] = n
            return n

        root = node_of(self.root_ino)
        dirs = {b"": root}  # walk() yields parents before children
        for path, ino in self.walk():
            paths.setdefault(ino, path)
            if ino == self.root_ino:
                continue
            parent_path, _, name = path.rpartition(b"/")
            child = node_of(ino)
            children = dirs[parent_path].children
            assert children is not None
            children[name] = child
            if child.is_dir:
                dirs[path] = child
        prefetch = [paths[i] for i in self.prefetch_inodes() if i in paths]
        return model.Image(root=root, blobs=blobs, chunk_size=self.chunk_size, prefetch=prefetch)
