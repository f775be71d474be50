"""docs/format.md's C structs read the same bytes layout.py writes (cffi, no compiler)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from cffi import FFI

from virtiofsd_nydus.format import layout as L

DOC = Path(__file__).resolve().parents[2] / "docs" / "format.md"

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="the C view is little-endian")


@pytest.fixture(scope="module")
def ffi() -> FFI:
    block = re.search(r"```c\n(.*?)```", DOC.read_text(), re.S)
    assert block, "no C block in docs/format.md"
    ffi = FFI()
    ffi.cdef(block.group(1))
    return ffi


# struct name, layout packer, the packed field values in order, the C field names in order
CASES = [
    (
        "vn_superblock",
        L.SUPERBLOCK,
        (L.MAGIC, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, b"r" * 32, b"h" * 32),
        "magic version_major version_minor flags header_size section_count digest_algo "
        "compression_mask chunk_size root_ino file_size root_digest header_digest",
    ),
    (
        "vn_section",
        L.SECTION,
        (1, 2, 3, 4, 5, b"d" * 32),
        "kind record_size offset size count digest",
    ),
    (
        "vn_inode",
        L.INODE,
        (1, 2, 3, 4, 5, 6, -7, 8, 9, 10, 11, 12, 13, 14, b"g" * 32),
        "mode uid gid nlink size rdev mtime_sec mtime_nsec parent data_start data_count "
        "xattr_start xattr_count flags digest",
    ),
    ("vn_dirent", L.DIRENT, (1 << 60, 2, 3, 4, 5), "name_key name_off ino name_len dtype"),
    ("vn_xattr", L.XATTR, (1, 2, 3, 4), "name_off value_off name_len value_len"),
    ("vn_file_chunk", L.FILE_CHUNK, (1 << 40, 2), "file_offset chunk_index"),
    (
        "vn_chunk",
        L.CHUNK,
        (b"c" * 32, 1, 2, 3, 4, 5, 6),
        "digest compressed_offset uncompressed_offset compressed_size uncompressed_size "
        "blob_index flags",
    ),
    (
        "vn_blob",
        L.BLOB,
        (b"s" * 32, 1, 2, 3, 4),
        "sha256 compressed_size uncompressed_size compression flags",
    ),
]


@pytest.mark.parametrize(("struct", "packer", "values", "fields"), CASES, ids=[c[0] for c in CASES])
def test_c_struct_matches_layout(
    ffi: FFI, struct: str, packer: object, values: tuple[object, ...], fields: str
) -> None:
    assert ffi.sizeof(f"struct {struct}") == packer.size  # type: ignore[attr-defined]
    raw = packer.pack(*values)  # type: ignore[attr-defined]
    rec = ffi.cast(f"struct {struct} *", ffi.from_buffer(raw))
    for name, want in zip(fields.split(), values, strict=True):
        got = getattr(rec, name)
        if isinstance(want, bytes):
            got = bytes(ffi.buffer(got))
        assert got == want, name
