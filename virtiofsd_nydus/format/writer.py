"""Lay a ``model.Image`` out as a bootstrap (see docs/format.md).

Deterministic: entries are sorted by name bytes, inode numbers are assigned breadth-first
(root = 1), the chunk table is ordered by first use, strings are deduplicated in first-use
order. The same Image always gives the same bytes. The model is validated on the way;
problems with the tree raise ImageError, a bad chunk size or prefetch list LocalError.
"""

from __future__ import annotations

import os
import stat
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import blake3

from ..errors import ImageError, LocalError
from . import layout as L
from . import merkle
from .model import Blob, Chunk, Compression, Image, Node, valid_chunk_size

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_NS = 1_000_000_000
_ZERO_DIGEST = bytes(L.DIGEST_LEN)
_S_IFMT = 0o170000
_SLASH, _NUL = 0x2F, 0  # `int in bytes` is a memchr; `bytes in bytes` is far slower


def write_bootstrap(image: Image) -> bytes:
    """Return the bootstrap bytes for ``image``."""
    return b"".join(_Builder(image).build())


def write_bootstrap_file(image: Image, path: str | os.PathLike[str]) -> None:
    """Write the bootstrap for ``image`` to ``path`` atomically (temp file + rename)."""
    parts = _Builder(image).build()
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Strings:
    """The string pool, each distinct string stored once."""

    def __init__(self) -> None:
        self.pool = bytearray()
        self._at: dict[bytes, int] = {}

    def add(self, s: bytes) -> int:
        off = self._at.get(s)
        if off is None:
            off = self._at[s] = len(self.pool)
            self.pool += s
        return off


class _Builder:
    """One use: ``_Builder(image).build()``. Hot loops are written out inline on purpose:
    a million-file image passes through them once per inode."""

    def __init__(self, image: Image) -> None:
        if not valid_chunk_size(image.chunk_size):
            raise LocalError(
                f"chunk size {image.chunk_size} is not a power of two between 4 KiB and 16 MiB"
            )
        self.image = image
        self.cs = image.chunk_size
        self.blobs = list(image.blobs)
        for i, blob in enumerate(self.blobs):
            _check_blob(i, blob)
        self.strings = _Strings()
        # Per inode, index = ino - 1:
        self.nodes: list[Node] = []
        self.names: list[bytes] = []  # name of its first entry (root: b"")
        self.parents: list[int] = []
        self.nlink: list[int] = []
        self.ino_of: dict[int, int] = {}  # id(node) -> ino
        self.dirents = bytearray()
        self.dir_ranges: dict[int, tuple[int, int]] = {}  # dir ino -> (first dirent, count)
        self.chunk_index: dict[bytes, int] = {}  # packed chunk record -> its index
        self.chunks = bytearray()
        self.chunk_count = 0
        self.file_chunks = bytearray()
        self.xattrs = bytearray()
        self.metas: dict[int, bytes] = {}  # dir ino -> merkle.metadata()
        self.inodes = bytearray()

    def _path(self, ino: int) -> bytes:
        parts = []
        while ino != 1:
            parts.append(self.names[ino - 1])
            ino = self.parents[ino - 1]
        return b"/" + b"/".join(reversed(parts))

    # -- tree walk ------------------------------------------------------------------------
    def _number(self) -> None:
        """Breadth-first: assign inode numbers and lay out every directory's entries."""
        root = self.image.root
        if not isinstance(root, Node) or not root.is_dir:
            raise ImageError("image root is not a directory")
        nodes, names, parents, nlink, ino_of = (
            self.nodes,
            self.names,
            self.parents,
            self.nlink,
            self.ino_of,
        )
        nodes.append(root)
        names.append(b"")
        parents.append(1)
        nlink.append(1)  # the root's ".." is itself: no parent entry counts it
        ino_of[id(root)] = 1
        add_string, pack, dirents = self.strings.add, L.DIRENT.pack, self.dirents
        name_key = L.name_key
        i = 0
        while i < len(nodes):
            node = nodes[i]
            i += 1
            if node.mode & _S_IFMT != stat.S_IFDIR:
                continue
            ino = i
            children = node.children or {}
            start = len(dirents) // L.DIRENT.size
            subdirs = 0
            try:
                ordered = sorted(children)
            except TypeError:
                raise ImageError(f"entry names in {self._path(ino)!r} are not all bytes") from None
            for name in ordered:
                if (
                    type(name) is not bytes
                    or not name
                    or len(name) > L.NAME_MAX
                    or _SLASH in name
                    or _NUL in name
                    or name == b"."
                    or name == b".."
                ):
                    raise ImageError(f"invalid entry name {name!r} in {self._path(ino)!r}")
                child = children[name]
                cino = ino_of.get(id(child))
                if cino is None:
                    if not isinstance(child, Node) or type(child.mode) is not int:
                        raise ImageError(f"{self._path(ino)!r}: entry {name!r} is not a Node")
                    nodes.append(child)
                    names.append(name)
                    parents.append(ino)
                    nlink.append(0)
                    cino = ino_of[id(child)] = len(nodes)
                    if cino > L.MAX_INODES:
                        raise ImageError(f"image has more than {L.MAX_INODES} inodes")
                cmode = child.mode
                if cmode & _S_IFMT == stat.S_IFDIR:
                    if nlink[cino - 1]:
                        raise ImageError(
                            f"directory {self._path(cino)!r} also linked in "
                            f"{self._path(ino)!r} (directory hard link or cycle)"
                        )
                    subdirs += 1
                nlink[cino - 1] += 1
                dirents += pack(
                    name_key(name), add_string(name), cino, len(name), (cmode >> 12) & 0xF
                )
            nlink[ino - 1] += 1 + subdirs  # its "." and its subdirectories' ".."
            self.dir_ranges[ino] = (start, len(children))

    # -- per-inode content ----------------------------------------------------------------
    def _content(self) -> None:
        """Xattrs, chunk lists, symlink targets, metadata and non-directory digests."""
        add_string = self.strings.add
        xattr_pack, xattrs = L.XATTR.pack, self.xattrs
        metas, nlink, parents = self.metas, self.nlink, self.parents
        inodes, inode_pack = self.inodes, L.INODE.pack
        for i, node in enumerate(self.nodes):
            ino = i + 1
            mode = node.mode
            fmt = mode & _S_IFMT
            if fmt not in L.FILE_TYPES or mode & ~0o177777:
                raise ImageError(f"{self._path(ino)!r}: invalid mode {mode!r}")
            xstart = len(xattrs) // L.XATTR.size
            xs: list[tuple[bytes, bytes]] = []
            if node.xattrs:
                xs = sorted(node.xattrs.items())
                for name, value in xs:
                    _check_xattr(name, value, self._path(ino))
                    xattrs += xattr_pack(add_string(name), add_string(value), len(name), len(value))
            size = node.size
            if fmt != stat.S_IFREG and node.chunks:
                raise ImageError(f"{self._path(ino)!r}: only regular files have chunks")
            if (fmt == stat.S_IFLNK) != (node.link_target is not None):
                raise ImageError(f"{self._path(ino)!r}: link target on a non-symlink, or none")
            if fmt != stat.S_IFDIR and node.children:
                raise ImageError(f"{self._path(ino)!r}: only directories have children")
            target = node.link_target
            if target is not None:
                if type(target) is not bytes or not target or _NUL in target:
                    raise ImageError(f"{self._path(ino)!r}: invalid symlink target {target!r}")
                if len(target) > L.SYMLINK_MAX:
                    raise ImageError(f"{self._path(ino)!r}: symlink target too long")
                size = len(target)
            sec, nsec = divmod(node.mtime_ns, _NS)
            if not (
                0 <= node.uid <= _U32
                and 0 <= node.gid <= _U32
                and 0 <= size <= _U64
                and 0 <= node.rdev <= _U64
                and _I64_MIN <= sec <= _I64_MAX
            ):
                raise ImageError(f"{self._path(ino)!r}: uid/gid/size/rdev/mtime out of range")
            meta = merkle.metadata(
                mode, node.uid, node.gid, nlink[i], size, node.rdev, sec, nsec, xs
            )
            if fmt == stat.S_IFREG:
                start, count, digest = self._file(node, ino, meta)
            elif fmt == stat.S_IFDIR:
                start, count = self.dir_ranges[ino]
                metas[ino] = meta
                digest = _ZERO_DIGEST  # filled in bottom-up by _dir_digests
            elif target is not None:
                start, count = add_string(target), len(target)
                digest = merkle.symlink_digest(mode, meta, target)
            else:
                start = count = 0
                digest = merkle.special_digest(mode, meta)
            inodes += inode_pack(
                mode,
                node.uid,
                node.gid,
                nlink[i],
                size,
                node.rdev,
                sec,
                nsec,
                parents[i],
                start,
                count,
                xstart,
                len(xs),
                0,
                digest,
            )

    def _file(self, node: Node, ino: int, meta: bytes) -> tuple[int, int, bytes]:
        size, cs = node.size, self.cs
        start = len(self.file_chunks) // L.FILE_CHUNK.size
        chunk_pack, fc_pack, index = L.CHUNK.pack, L.FILE_CHUNK.pack, self.chunk_index
        prev = -1
        hashed: list[tuple[int, int, bytes]] = []
        for fc in node.chunks:
            off = fc.file_offset
            c = fc.chunk
            if off <= prev or off % cs or off >= size or c.uncompressed_size != min(cs, size - off):
                raise ImageError(
                    f"{self._path(ino)!r}: chunk at offset {off} is unordered, unaligned, past "
                    f"the file's size {size} or not {min(cs, max(size - off, 0))} bytes long"
                )
            try:
                rec = chunk_pack(
                    c.digest,
                    c.compressed_offset,
                    c.uncompressed_offset,
                    c.compressed_size,
                    c.uncompressed_size,
                    c.blob_index,
                    L.CHUNK_FLAG_COMPRESSED if c.compressed else 0,
                )
            except (struct.error, TypeError):
                self._check_chunk(c, ino)
                raise ImageError(f"{self._path(ino)!r}: chunk fields out of range") from None
            idx = index.get(rec)
            if idx is None:
                self._check_chunk(c, ino)
                idx = index[rec] = self.chunk_count
                self.chunk_count += 1
                self.chunks += rec
            self.file_chunks += fc_pack(off, idx)
            hashed.append((off, c.uncompressed_size, rec[:32]))  # the digest as stored
            prev = off
        return start, len(hashed), merkle.file_digest(node.mode, meta, hashed)

    def _check_chunk(self, c: Chunk, ino: int) -> None:
        problem = self._chunk_problem(c)
        if problem:
            raise ImageError(f"chunk of {self._path(ino)!r}: {problem}")

    def _chunk_problem(self, c: Chunk) -> str | None:
        if not isinstance(c.digest, bytes) or len(c.digest) != L.DIGEST_LEN:
            return f"digest must be {L.DIGEST_LEN} bytes"
        if not 0 <= c.blob_index < len(self.blobs):
            return f"blob index {c.blob_index} out of range"
        blob = self.blobs[c.blob_index]
        if not (0 < c.compressed_size <= _U32 and 0 < c.uncompressed_size <= self.cs):
            return f"bad sizes {c.compressed_size}/{c.uncompressed_size}"
        if (
            c.compressed_offset < 0
            or c.compressed_offset + c.compressed_size > blob.compressed_size
        ):
            return f"compressed range outside blob {blob.digest}"
        end = c.uncompressed_offset + c.uncompressed_size
        if c.uncompressed_offset < 0 or end > blob.uncompressed_size:
            return f"uncompressed range outside blob {blob.digest}"
        if c.compressed and blob.compression == Compression.NONE:
            return f"compressed chunk in uncompressed blob {blob.digest}"
        if not c.compressed and c.compressed_size != c.uncompressed_size:
            return "raw chunk with different stored and data sizes"
        return None

    def _dir_digests(self) -> None:
        """Fill in directory digests, reading entries and child digests back from the packed
        sections. Subdirectories always have larger inode numbers than their parent
        (breadth-first, no directory hard links): one reverse pass sees children first."""
        inodes, dirents, pool = self.inodes, self.dirents, self.strings.pool
        rec, de_rec, at = L.INODE.size, L.DIRENT.size, L.INODE_DIGEST_OFFSET
        unpack = L.DIRENT.unpack_from
        for ino in sorted(self.dir_ranges, reverse=True):
            start, count = self.dir_ranges[ino]
            entries = []
            for i in range(start, start + count):
                _, noff, cino, nlen, _ = unpack(dirents, i * de_rec)
                d = (cino - 1) * rec + at
                entries.append((bytes(pool[noff : noff + nlen]), bytes(inodes[d : d + 32])))
            mode = self.nodes[ino - 1].mode
            d = (ino - 1) * rec + at
            inodes[d : d + 32] = merkle.dir_digest(mode, self.metas[ino], entries)

    def _prefetch(self) -> bytes:
        out = bytearray()
        seen: set[int] = set()
        for path in self.image.prefetch:
            ino = self._resolve(path)
            if ino not in seen:
                seen.add(ino)
                out += L.PREFETCH.pack(ino)
        return bytes(out)

    def _resolve(self, path: bytes) -> int:
        if not isinstance(path, bytes) or not path.startswith(b"/"):
            raise LocalError(f"prefetch path {path!r} is not an absolute bytes path")
        node = self.image.root
        for part in path.split(b"/"):
            if not part:
                continue
            children = node.children if node.is_dir else None
            child = children.get(part) if children else None
            if child is None:
                raise LocalError(f"prefetch path {path!r} is not in the image")
            node = child
        return self.ino_of[id(node)]

    # -- assembly -------------------------------------------------------------------------
    def build(self) -> list[bytes | bytearray]:
        """The bootstrap as a list of parts to write out in order (no whole-file copy)."""
        self._number()
        self._content()
        self._dir_digests()
        blobs = b"".join(
            L.BLOB.pack(
                bytes.fromhex(b.digest[7:]),
                b.compressed_size,
                b.uncompressed_size,
                b.compression,
                0,
            )
            for b in self.blobs
        )
        prefetch = self._prefetch()
        sections: list[tuple[int, int, bytes | bytearray, int]] = [
            (L.Kind.INODES, L.INODE.size, self.inodes, len(self.nodes)),
            (L.Kind.DIRENTS, L.DIRENT.size, self.dirents, len(self.dirents) // L.DIRENT.size),
            (L.Kind.XATTRS, L.XATTR.size, self.xattrs, len(self.xattrs) // L.XATTR.size),
            (
                L.Kind.FILE_CHUNKS,
                L.FILE_CHUNK.size,
                self.file_chunks,
                len(self.file_chunks) // L.FILE_CHUNK.size,
            ),
            (L.Kind.CHUNKS, L.CHUNK.size, self.chunks, self.chunk_count),
            (L.Kind.BLOBS, L.BLOB.size, blobs, len(self.blobs)),
            (L.Kind.PREFETCH, L.PREFETCH.size, prefetch, len(prefetch) // L.PREFETCH.size),
            (L.Kind.STRINGS, 1, self.strings.pool, len(self.strings.pool)),
        ]
        root_digest = bytes(self.inodes[L.INODE_DIGEST_OFFSET : L.INODE_DIGEST_OFFSET + 32])
        return _assemble(sections, self.cs, root_digest, self.blobs)


def _check_xattr(name: bytes, value: bytes, path: bytes) -> None:
    if not isinstance(name, bytes) or not isinstance(value, bytes):
        raise ImageError(f"{path!r}: xattr names and values must be bytes")
    if not name or _NUL in name or len(name) > L.XATTR_NAME_MAX:
        raise ImageError(f"{path!r}: invalid xattr name {name[:64]!r}")
    if len(value) > L.XATTR_VALUE_MAX:
        raise ImageError(f"{path!r}: xattr {name!r} value longer than {L.XATTR_VALUE_MAX}")


def _check_blob(i: int, blob: Blob) -> None:
    d = blob.digest
    ok = isinstance(d, str) and d.startswith("sha256:") and len(d) == 71
    try:
        ok = ok and len(bytes.fromhex(d[7:])) == 32 and d[7:] == d[7:].lower()
    except ValueError:
        ok = False
    if not ok:
        raise ImageError(f"blob {i}: digest {d!r} is not sha256:<64 lowercase hex>")
    if not (0 <= blob.compressed_size <= _U64 and 0 <= blob.uncompressed_size <= _U64):
        raise ImageError(f"blob {d}: sizes out of range")
    if blob.compression not in (Compression.NONE, Compression.ZSTD):
        raise ImageError(f"blob {d}: unknown compression {blob.compression}")


def _assemble(
    sections: Sequence[tuple[int, int, bytes | bytearray, int]],
    chunk_size: int,
    root: bytes,
    blobs: list[Blob],
) -> list[bytes | bytearray]:
    """Header + sections, each padded to ALIGN; returns the parts in file order."""
    header_size = L.SUPERBLOCK_SIZE + len(sections) * L.SECTION_SIZE
    offset = header_size
    table: list[bytes] = []
    bodies: list[bytes | bytearray] = []
    for kind, rec, body, count in sections:
        pad = bytes(L.align(len(body)) - len(body))
        h = blake3.blake3(body, max_threads=blake3.blake3.AUTO)
        h.update(pad)
        size = len(body) + len(pad)
        table.append(L.Section(kind, rec, offset, size, count, h.digest()).pack())
        bodies += (body, pad)
        offset += size
    mask = 0
    for b in blobs:
        mask |= 1 << b.compression
    sb = L.Superblock(
        version_major=L.VERSION_MAJOR,
        version_minor=L.VERSION_MINOR,
        flags=0,
        header_size=header_size,
        section_count=len(sections),
        digest_algo=L.DIGEST_BLAKE3_256,
        compression_mask=mask,
        chunk_size=chunk_size,
        root_ino=1,
        file_size=offset,
        root_digest=root,
        header_digest=_ZERO_DIGEST,
    )
    header = bytearray(sb.pack() + b"".join(table))
    at = L.HEADER_DIGEST_OFFSET
    header[at : at + L.DIGEST_LEN] = blake3.blake3(bytes(header)).digest()
    return [bytes(header), *bodies]
