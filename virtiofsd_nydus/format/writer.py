"""Lay a ``model.Image`` out as a bootstrap (see docs/format.md).

Deterministic: entries are sorted by name bytes, inode numbers are assigned breadth-first
(root = 1), the chunk table is ordered by first use, strings are deduplicated in first-use
order. The same Image always gives the same bytes. The model is validated on the way;
problems with the tree raise ImageError, a bad chunk size or prefetch list LocalError.
"""

from __future__ import annotations

import os
import stat
import tempfile
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


def write_bootstrap(image: Image) -> bytes:
    """Return the bootstrap bytes for ``image``."""
    return _Builder(image).build()


def write_bootstrap_file(image: Image, path: str | os.PathLike[str]) -> None:
    """Write the bootstrap for ``image`` to ``path`` atomically (temp file + rename)."""
    data = write_bootstrap(image)
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_name(name: object, where: bytes) -> bytes:
    if not isinstance(name, bytes):
        raise ImageError(f"entry name {name!r} in {where!r} is not bytes")
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise ImageError(f"invalid entry name {name!r} in {where!r}")
    if len(name) > L.NAME_MAX:
        raise ImageError(f"entry name longer than {L.NAME_MAX} bytes in {where!r}")
    return name


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + name if parent == b"/" else parent + b"/" + name


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
        # Per inode (index = ino - 1):
        self.nodes: list[Node] = []
        self.paths: list[bytes] = []  # first path found (for messages and prefetch)
        self.parents: list[int] = []
        self.nlink: list[int] = []
        self.data: list[tuple[int, int]] = []  # (data_start, data_count)
        self.digests: list[bytes] = []
        self.ino_of: dict[int, int] = {}  # id(node) -> ino
        self.dirents = bytearray()
        self.dir_entries: dict[int, list[tuple[bytes, int]]] = {}
        self.chunk_index: dict[Chunk, int] = {}
        self.chunks = bytearray()
        self.chunk_digests: list[bytes] = []
        self.file_chunks = bytearray()
        self.xattrs = bytearray()
        self.xattr_ranges: list[tuple[int, int]] = []
        self.metas: list[bytes] = []  # merkle.metadata() per inode
        self.stats: list[tuple[int, int, int]] = []  # (size as stored, mtime s, mtime ns)
        self.dir_ranges: dict[int, tuple[int, int]] = {}  # dir ino -> (first dirent, count)

    # -- tree walk ------------------------------------------------------------------------
    def _add(self, node: Node, path: bytes, parent: int) -> int:
        if not isinstance(node, Node):
            raise ImageError(f"{path!r}: not a model.Node")
        self.nodes.append(node)
        self.paths.append(path)
        self.parents.append(parent)
        self.nlink.append(0)
        ino = len(self.nodes)
        if ino > L.MAX_INODES:
            raise ImageError(f"image has more than {L.MAX_INODES} inodes")
        self.ino_of[id(node)] = ino
        return ino

    def _number(self) -> None:
        """Breadth-first: assign inode numbers and lay out every directory's entries."""
        root = self.image.root
        if not root.is_dir:
            raise ImageError("image root is not a directory")
        self._add(root, b"/", 1)
        self.nlink[0] = 1  # the root's ".." is itself: no parent entry counts it
        i = 0
        while i < len(self.nodes):
            node = self.nodes[i]
            ino = i + 1
            i += 1
            if not node.is_dir:
                continue
            path = self.paths[ino - 1]
            children = node.children or {}
            start = len(self.dirents) // L.DIRENT.size
            entries: list[tuple[bytes, int]] = []
            subdirs = 0
            for name in sorted(children):
                _check_name(name, path)
                child = children[name]
                cino = self.ino_of.get(id(child))
                if cino is None:
                    cino = self._add(child, _join(path, name), ino)
                elif child.is_dir:
                    raise ImageError(
                        f"directory {self.paths[cino - 1]!r} also linked at "
                        f"{_join(path, name)!r} (directory hard link or cycle)"
                    )
                if child.is_dir:
                    subdirs += 1
                self.nlink[cino - 1] += 1
                dtype = (child.mode >> 12) & 0xF
                self.dirents += L.DIRENT.pack(self.strings.add(name), cino, len(name), dtype)
                entries.append((name, cino))
            self.nlink[ino - 1] += 1 + subdirs  # its "." and its subdirs' ".."
            self.dir_entries[ino] = entries
            self.dir_ranges[ino] = (start, len(entries))

    # -- per-inode content ----------------------------------------------------------------
    def _chunk_ref(self, chunk: Chunk, path: bytes) -> int:
        idx = self.chunk_index.get(chunk)
        if idx is None:
            self._check_chunk(chunk, path)
            idx = self.chunk_index[chunk] = len(self.chunk_digests)
            flags = L.CHUNK_FLAG_COMPRESSED if chunk.compressed else 0
            self.chunks += L.CHUNK.pack(
                chunk.digest,
                chunk.compressed_offset,
                chunk.uncompressed_offset,
                chunk.compressed_size,
                chunk.uncompressed_size,
                chunk.blob_index,
                flags,
            )
            self.chunk_digests.append(chunk.digest)
        return idx

    def _check_chunk(self, c: Chunk, path: bytes) -> None:
        where = f"chunk of {path!r}"
        if not isinstance(c.digest, bytes) or len(c.digest) != L.DIGEST_LEN:
            raise ImageError(f"{where}: digest must be {L.DIGEST_LEN} bytes")
        if not 0 <= c.blob_index < len(self.blobs):
            raise ImageError(f"{where}: blob index {c.blob_index} out of range")
        blob = self.blobs[c.blob_index]
        if not (0 < c.compressed_size <= _U32 and 0 < c.uncompressed_size <= self.cs):
            raise ImageError(f"{where}: bad sizes {c.compressed_size}/{c.uncompressed_size}")
        if (
            c.compressed_offset < 0
            or c.compressed_offset + c.compressed_size > blob.compressed_size
        ):
            raise ImageError(f"{where}: compressed range outside blob {blob.digest}")
        if (
            c.uncompressed_offset < 0
            or c.uncompressed_offset + c.uncompressed_size > blob.uncompressed_size
        ):
            raise ImageError(f"{where}: uncompressed range outside blob {blob.digest}")
        if c.compressed and blob.compression == Compression.NONE:
            raise ImageError(f"{where}: compressed chunk in uncompressed blob {blob.digest}")
        if not c.compressed and c.compressed_size != c.uncompressed_size:
            raise ImageError(f"{where}: raw chunk with different stored and data sizes")

    def _file(self, node: Node, path: bytes, meta: bytes) -> tuple[int, int, bytes]:
        size, cs = node.size, self.cs
        start = len(self.file_chunks) // L.FILE_CHUNK.size
        prev = -1
        hashed: list[tuple[int, int, bytes]] = []
        for fc in node.chunks:
            off = fc.file_offset
            if off <= prev or off % cs or off >= size:
                raise ImageError(
                    f"{path!r}: chunk at offset {off} is unordered, unaligned or past the "
                    f"file's size {size}"
                )
            chunk = fc.chunk
            if chunk.uncompressed_size != min(cs, size - off):
                raise ImageError(
                    f"{path!r}: chunk at offset {off} holds {chunk.uncompressed_size} bytes, "
                    f"expected {min(cs, size - off)}"
                )
            self.file_chunks += L.FILE_CHUNK.pack(off, self._chunk_ref(chunk, path))
            hashed.append((off, chunk.uncompressed_size, chunk.digest))
            prev = off
        return start, len(hashed), merkle.file_digest(node.mode, meta, hashed)

    def _content(self) -> None:
        """Xattrs, chunk lists, symlink targets and the digests of all non-directories."""
        strings = self.strings
        for i, node in enumerate(self.nodes):
            ino, path = i + 1, self.paths[i]
            xs = sorted(node.xattrs.items())
            self.xattr_ranges.append((len(self.xattrs) // L.XATTR.size, len(xs)))
            for name, value in xs:
                _check_xattr(name, value, path)
                self.xattrs += L.XATTR.pack(
                    strings.add(name), strings.add(value), len(name), len(value)
                )
            fmt = stat.S_IFMT(node.mode)
            if fmt not in L.FILE_TYPES or node.mode & ~0o177777:
                raise ImageError(f"{path!r}: invalid mode {node.mode:#o}")
            if fmt != stat.S_IFREG and node.chunks:
                raise ImageError(f"{path!r}: only regular files have chunks")
            if (fmt == stat.S_IFLNK) != (node.link_target is not None):
                raise ImageError(f"{path!r}: link target set on a non-symlink, or missing")
            if fmt != stat.S_IFDIR and node.children:
                raise ImageError(f"{path!r}: only directories have children")
            size = node.size
            if fmt == stat.S_IFLNK:
                target = node.link_target or b""
                if not target or b"\0" in target or len(target) > L.SYMLINK_MAX:
                    raise ImageError(f"{path!r}: invalid symlink target {target[:64]!r}")
                size = len(target)
            meta = self._meta(node, size, xs, path, ino)
            self.metas.append(meta)
            if fmt == stat.S_IFREG:
                start, count, digest = self._file(node, path, meta)
                self.data.append((start, count))
            elif fmt == stat.S_IFDIR:
                self.data.append(self.dir_ranges[ino])
                digest = _ZERO_DIGEST  # filled in bottom-up by _dir_digests
            elif fmt == stat.S_IFLNK:
                self.data.append((strings.add(target), len(target)))
                digest = merkle.symlink_digest(node.mode, meta, target)
            else:
                self.data.append((0, 0))
                digest = merkle.special_digest(node.mode, meta)
            self.digests.append(digest)

    def _meta(
        self, node: Node, size: int, xs: list[tuple[bytes, bytes]], path: bytes, ino: int
    ) -> bytes:
        sec, nsec = divmod(node.mtime_ns, _NS)
        if not (
            0 <= node.uid <= _U32
            and 0 <= node.gid <= _U32
            and 0 <= size <= _U64
            and 0 <= node.rdev <= _U64
            and _I64_MIN <= sec <= _I64_MAX
        ):
            raise ImageError(f"{path!r}: uid/gid/size/rdev/mtime out of range")
        self.stats.append((size, sec, nsec))
        return merkle.metadata(
            node.mode, node.uid, node.gid, self.nlink[ino - 1], size, node.rdev, sec, nsec, xs
        )

    def _dir_digests(self) -> None:
        # Subdirectories always have larger inode numbers than their parent (breadth-first,
        # no directory hard links), so one reverse pass sees every child before its parent.
        digests = self.digests
        for ino in sorted(self.dir_entries, reverse=True):
            node = self.nodes[ino - 1]
            entries = [(name, digests[cino - 1]) for name, cino in self.dir_entries[ino]]
            digests[ino - 1] = merkle.dir_digest(node.mode, self.metas[ino - 1], entries)

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
    def build(self) -> bytes:
        self._number()
        self._content()
        self._dir_digests()
        inodes = bytearray()
        for i, node in enumerate(self.nodes):
            size, sec, nsec = self.stats[i]
            start, count = self.data[i]
            xstart, xcount = self.xattr_ranges[i]
            inodes += L.INODE.pack(
                node.mode,
                node.uid,
                node.gid,
                self.nlink[i],
                size,
                node.rdev,
                sec,
                nsec,
                self.parents[i],
                start,
                count,
                xstart,
                xcount,
                0,
                self.digests[i],
            )
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
        sections: list[tuple[int, int, bytes, int]] = [
            (L.Kind.INODES, L.INODE.size, bytes(inodes), len(self.nodes)),
            (L.Kind.DIRENTS, L.DIRENT.size, bytes(self.dirents), len(self.dirents) // 16),
            (L.Kind.XATTRS, L.XATTR.size, bytes(self.xattrs), len(self.xattrs) // L.XATTR.size),
            (
                L.Kind.FILE_CHUNKS,
                L.FILE_CHUNK.size,
                bytes(self.file_chunks),
                len(self.file_chunks) // 16,
            ),
            (L.Kind.CHUNKS, L.CHUNK.size, bytes(self.chunks), len(self.chunk_digests)),
            (L.Kind.BLOBS, L.BLOB.size, blobs, len(self.blobs)),
            (L.Kind.PREFETCH, L.PREFETCH.size, prefetch, len(prefetch) // L.PREFETCH.size),
            (L.Kind.STRINGS, 1, bytes(self.strings.pool), len(self.strings.pool)),
        ]
        return _assemble(sections, self.cs, self.digests[0], self.blobs)


def _check_xattr(name: bytes, value: bytes, path: bytes) -> None:
    if not isinstance(name, bytes) or not isinstance(value, bytes):
        raise ImageError(f"{path!r}: xattr names and values must be bytes")
    if not name or b"\0" in name or len(name) > L.XATTR_NAME_MAX:
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
    sections: list[tuple[int, int, bytes, int]], chunk_size: int, root: bytes, blobs: list[Blob]
) -> bytes:
    header_size = L.SUPERBLOCK_SIZE + len(sections) * L.SECTION_SIZE
    offset = header_size
    table: list[bytes] = []
    bodies: list[bytes] = []
    for kind, rec, body, count in sections:
        padded = body + bytes(L.align(len(body)) - len(body))
        digest = blake3.blake3(padded).digest()
        table.append(L.Section(kind, rec, offset, len(padded), count, digest).pack())
        bodies.append(padded)
        offset += len(padded)
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
    header = sb.pack() + b"".join(table)
    hd = blake3.blake3(header).digest()
    off = L.HEADER_DIGEST_OFFSET
    header = header[:off] + hd + header[off + L.DIGEST_LEN :]
    return b"".join([header, *bodies])
