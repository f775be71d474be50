"""The bootstrap's binary layout: every struct, size and constant, in one place.

docs/format.md is the prose version of this module; keep the two in step. All integers are
little-endian; every record is naturally aligned (each field at a multiple of its size, each
record size a multiple of 8) so the C core can read them in place from the mapping.
"""

from __future__ import annotations

import mmap
import stat
import struct
from dataclasses import dataclass

from ..errors import ImageError

MAGIC = b"VNYDBOOT"
VERSION_MAJOR = 1  # readers reject any other major version
VERSION_MINOR = 0  # readers accept any minor version: minors only add
KNOWN_FLAGS = 0  # no superblock flags defined yet; a set unknown bit makes a reader refuse

DIGEST_BLAKE3_256 = 1
DIGEST_LEN = 32
ALIGN = 8  # every section starts at, and is padded to, a multiple of this

# Superblock (128 bytes) --------------------------------------------------------------------
SUPERBLOCK = struct.Struct("<8sHHIIHBBIIQ32s32s24x")
SUPERBLOCK_SIZE = SUPERBLOCK.size
HEADER_DIGEST_OFFSET = 72  # the header digest is computed with these 32 bytes zeroed
assert SUPERBLOCK_SIZE == 128

# Section table entry (64 bytes), SUPERBLOCK_SIZE onwards ------------------------------------
SECTION = struct.Struct("<IIQQQ32s")
SECTION_SIZE = SECTION.size
assert SECTION_SIZE == 64


class Kind:
    """Section kinds. Kinds 1-8 are required in version 1.x; readers skip unknown kinds."""

    INODES = 1
    DIRENTS = 2
    STRINGS = 3
    XATTRS = 4
    FILE_CHUNKS = 5
    CHUNKS = 6
    BLOBS = 7
    PREFETCH = 8


REQUIRED_KINDS = tuple(range(Kind.INODES, Kind.PREFETCH + 1))
MAX_SECTIONS = 64

# Inode record (104 bytes); inode number N is record N-1 ------------------------------------
INODE = struct.Struct("<IIIIQQqIIQIIII32s")
assert INODE.size == 104
INODE_DIGEST_OFFSET = 72

# Directory entry (24 bytes): name key, name_off, ino, name_len, dtype (S_IFMT >> 12), pad.
# The name key is the first 8 name bytes, zero padded, read as a big-endian number (stored,
# like every integer, little-endian). Names hold no NUL, so keys order as names do, and a
# lookup compares keys (in C: bisect over the key column) before it touches the string pool.
DIRENT = struct.Struct("<QQIHBx")
assert DIRENT.size == 24
NAME_KEY_LEN = 8


def name_key(name: bytes) -> int:
    return int.from_bytes((name + b"\0\0\0\0\0\0\0\0")[:NAME_KEY_LEN], "big")


# Xattr record (24 bytes): name_off, value_off, name_len, value_len
XATTR = struct.Struct("<QQII")
assert XATTR.size == 24

# File chunk record (16 bytes): file_offset, chunk_index, pad
FILE_CHUNK = struct.Struct("<QI4x")
assert FILE_CHUNK.size == 16

# Chunk record (64 bytes): digest, compressed_offset, uncompressed_offset,
# compressed_size, uncompressed_size, blob_index, flags
CHUNK = struct.Struct("<32sQQIIII")
assert CHUNK.size == 64
CHUNK_FLAG_COMPRESSED = 1

# Blob record (56 bytes): sha256, compressed_size, uncompressed_size, compression, flags
BLOB = struct.Struct("<32sQQII")
assert BLOB.size == 56

# Prefetch record (4 bytes): ino
PREFETCH = struct.Struct("<I")

# Smallest record size a reader of this version accepts per kind (a later minor may store
# larger records, appending fields; readers stride by the stored size).
RECORD_SIZES = {
    Kind.INODES: INODE.size,
    Kind.DIRENTS: DIRENT.size,
    Kind.STRINGS: 1,
    Kind.XATTRS: XATTR.size,
    Kind.FILE_CHUNKS: FILE_CHUNK.size,
    Kind.CHUNKS: CHUNK.size,
    Kind.BLOBS: BLOB.size,
    Kind.PREFETCH: PREFETCH.size,
}

# Limits the writer enforces and readers may rely on.
NAME_MAX = 255
SYMLINK_MAX = 4095
XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 65536
MAX_INODES = (1 << 32) - 2  # inode numbers are u32, 0 means none

# File types (mode & S_IFMT) an inode may have.
FILE_TYPES = frozenset(
    {
        stat.S_IFREG,
        stat.S_IFDIR,
        stat.S_IFLNK,
        stat.S_IFCHR,
        stat.S_IFBLK,
        stat.S_IFIFO,
        stat.S_IFSOCK,
    }
)


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


@dataclass(frozen=True, slots=True)
class Section:
    kind: int
    record_size: int
    offset: int
    size: int  # bytes, a multiple of ALIGN, including padding after the last record
    count: int  # records
    digest: bytes  # blake3-256 of the section's `size` bytes

    def pack(self) -> bytes:
        return SECTION.pack(
            self.kind, self.record_size, self.offset, self.size, self.count, self.digest
        )

    @classmethod
    def unpack_from(cls, buf: bytes | mmap.mmap, offset: int) -> Section:
        return cls(*SECTION.unpack_from(buf, offset))

    def validate(self, header_size: int, file_size: int) -> None:
        what = f"section kind {self.kind}"
        if self.offset % ALIGN or self.size % ALIGN:
            raise ImageError(f"bootstrap {what}: offset/size not {ALIGN}-byte aligned")
        if self.offset < header_size or self.offset + self.size > file_size:
            raise ImageError(
                f"bootstrap {what}: bytes {self.offset}..{self.offset + self.size} "
                f"outside the file's {header_size}..{file_size} (truncated?)"
            )
        need = RECORD_SIZES.get(self.kind)
        if need is None:
            return  # an unknown (newer minor) section: only its bounds matter to us
        bad = self.record_size < need or self.record_size % (ALIGN if need >= ALIGN else need)
        if bad or (self.kind == Kind.STRINGS and self.record_size != 1):
            raise ImageError(f"bootstrap {what}: bad record size {self.record_size}")
        if self.count * self.record_size > self.size:
            raise ImageError(
                f"bootstrap {what}: {self.count} records of {self.record_size} bytes "
                f"exceed its {self.size} bytes"
            )


@dataclass(frozen=True, slots=True)
class Superblock:
    version_major: int
    version_minor: int
    flags: int
    header_size: int
    section_count: int
    digest_algo: int
    compression_mask: int  # bit (1 << model.Compression.X) set if some blob uses X
    chunk_size: int
    root_ino: int
    file_size: int
    root_digest: bytes
    header_digest: bytes

    def pack(self) -> bytes:
        return SUPERBLOCK.pack(
            MAGIC,
            self.version_major,
            self.version_minor,
            self.flags,
            self.header_size,
            self.section_count,
            self.digest_algo,
            self.compression_mask,
            self.chunk_size,
            self.root_ino,
            self.file_size,
            self.root_digest,
            self.header_digest,
        )

    @classmethod
    def unpack_from(cls, buf: bytes | mmap.mmap) -> Superblock:
        if len(buf) < SUPERBLOCK_SIZE:
            raise ImageError(
                f"bootstrap too short: {len(buf)} bytes, superblock needs {SUPERBLOCK_SIZE}"
            )
        magic, *fields = SUPERBLOCK.unpack_from(buf, 0)
        if magic != MAGIC:
            raise ImageError(f"not a bootstrap: magic {magic!r}, expected {MAGIC!r}")
        return cls(*fields)

    def validate(self, actual_size: int) -> None:
        if self.version_major != VERSION_MAJOR:
            raise ImageError(
                f"bootstrap version {self.version_major}.{self.version_minor} unsupported "
                f"(this reader handles {VERSION_MAJOR}.x)"
            )
        if self.flags & ~KNOWN_FLAGS:
            raise ImageError(f"bootstrap has unknown flags {self.flags:#x}")
        if self.digest_algo != DIGEST_BLAKE3_256:
            raise ImageError(f"bootstrap digest algorithm {self.digest_algo} unsupported")
        if self.compression_mask & ~0b11:
            raise ImageError(f"bootstrap uses unknown compression {self.compression_mask:#x}")
        cs = self.chunk_size
        if not (4096 <= cs <= 16 << 20 and cs & (cs - 1) == 0):
            raise ImageError(f"bootstrap chunk size {cs} is not a power of two in 4K..16M")
        if self.file_size != actual_size:
            raise ImageError(
                f"bootstrap is {actual_size} bytes, its superblock says {self.file_size} "
                "(truncated or padded)"
            )
        if not 0 < self.section_count <= MAX_SECTIONS:
            raise ImageError(f"bootstrap section count {self.section_count} out of range")
        if self.header_size != SUPERBLOCK_SIZE + self.section_count * SECTION_SIZE:
            raise ImageError(f"bootstrap header size {self.header_size} inconsistent")
        if self.header_size > actual_size:
            raise ImageError("bootstrap truncated inside its section table")
        if self.root_ino != 1:
            raise ImageError(f"bootstrap root inode {self.root_ino}, expected 1")
