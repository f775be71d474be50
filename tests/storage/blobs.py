"""Real blobs for storage tests: chunk payloads zstd-compressed (or raw) and blake3-pinned.

Built here rather than by the converter so storage tests stand alone; the layout is the
one the converter writes (chunk k of a blob at uncompressed offset k * slot size).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import blake3
import zstandard

from virtiofsd_nydus.format.model import Blob, Chunk

SLOT = 64 << 10  # small chunk size keeps tests fast; still a valid image chunk size


@dataclass
class BuiltImage:
    chunks: list[Chunk]
    blobs: list[Blob]
    data: list[bytes]  # expected uncompressed bytes, by chunk index
    blob_dir: Path  # OCI-style: blob_dir/sha256/<hex>

    def blob_path(self, blob_index: int) -> Path:
        return self.blob_dir / "sha256" / self.blobs[blob_index].digest.removeprefix("sha256:")


def payloads(seed: int, n: int, slot: int = SLOT) -> list[bytes]:
    """A mix: compressible chunks, incompressible ones (stored raw), a short last chunk."""
    rnd = random.Random(seed)
    out = []
    for k in range(n):
        size = slot if k < n - 1 else slot // 3 + 17
        if k % 2:
            out.append(rnd.randbytes(size))
        else:
            word = rnd.randbytes(16)
            out.append((word * (size // 16 + 1))[:size])
    return out


def write_blob(dest_dir: Path, stored: list[bytes]) -> str:
    raw = b"".join(stored)
    hexd = hashlib.sha256(raw).hexdigest()
    (dest_dir / "sha256").mkdir(parents=True, exist_ok=True)
    (dest_dir / "sha256" / hexd).write_bytes(raw)
    return f"sha256:{hexd}"


def build_image(root: Path, blobs_payloads: list[list[bytes]], slot: int = SLOT) -> BuiltImage:
    cctx = zstandard.ZstdCompressor(level=3)
    chunks: list[Chunk] = []
    blobs: list[Blob] = []
    data: list[bytes] = []
    blob_dir = root / "blobs"
    for b_index, plain_list in enumerate(blobs_payloads):
        stored: list[bytes] = []
        offset = 0
        for k, plain in enumerate(plain_list):
            comp = cctx.compress(plain)
            keep = comp if len(comp) < len(plain) else plain
            chunks.append(
                Chunk(
                    digest=blake3.blake3(plain).digest(),
                    blob_index=b_index,
                    compressed_offset=offset,
                    compressed_size=len(keep),
                    uncompressed_offset=k * slot,
                    uncompressed_size=len(plain),
                    compressed=keep is comp,
                )
            )
            data.append(plain)
            stored.append(keep)
            offset += len(keep)
        digest = write_blob(blob_dir, stored)
        usize = (len(plain_list) - 1) * slot + len(plain_list[-1])
        blobs.append(Blob(digest, offset, usize))
    return BuiltImage(chunks, blobs, data, blob_dir)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())
