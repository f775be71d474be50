"""The data blob: chunk payloads concatenated, named by the sha256 of the whole file.

New chunks go to a spool file in the order they are first met. At the end only chunks the
final tree uses are kept (a file deleted by a later layer leaves its chunks behind): when
every spooled chunk is live the spool simply becomes the blob, otherwise the live ones are
copied over in the same order.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import LocalError
from ..format.model import DEFAULT_CHUNK_SIZE, Blob, Compression

COPY_SIZE = 1 << 20
MAX_QUEUED = 32  # payloads waiting for the writer thread


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a chunk landed in the blob."""

    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int
    compressed: bool


class Spool:
    def __init__(self, path: Path, slot_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.path = path
        # Chunk k of the blob gets uncompressed offset k * slot_size (the image's chunk
        # size): storage's cache keeps one bitmap bit per slot (docs/storage.md).
        self.slot_size = slot_size
        self._f = open(path, "wb")  # noqa: SIM115 - closed in finish()
        # writing and hashing (both release the GIL) happen on their own thread, in order
        self._io = ThreadPoolExecutor(1, thread_name_prefix="spool")
        self._room = threading.BoundedSemaphore(MAX_QUEUED)
        self._error: BaseException | None = None
        self._hash = hashlib.sha256()
        self._size = 0
        self._raw = 0
        self.entries: dict[bytes, Placed] = {}

    def __contains__(self, digest: object) -> bool:
        return digest in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, digest: bytes, payload: bytes, compressed: bool, raw_size: int) -> None:
        self.entries[digest] = Placed(self._size, len(payload), self._raw, raw_size, compressed)
        self._room.acquire()
        self._io.submit(self._write, payload)
        self._size += len(payload)
        self._raw += self.slot_size

    def _write(self, payload: bytes) -> None:
        try:
            if self._error is None:
                self._f.write(payload)
                self._hash.update(payload)
        except BaseException as exc:
            self._error = exc
        finally:
            self._room.release()

    def close(self) -> None:
        self._io.shutdown(wait=True)
        if not self._f.closed:
            self._f.close()
        if self._error is not None:
            err, self._error = self._error, None
            raise LocalError(f"cannot write {self.path}: {err}") from None

    def finish(self, live: set[bytes], blob_dir: Path) -> tuple[Blob | None, dict[bytes, Placed]]:
        """Write the blob into ``blob_dir`` (named by its hex digest) keeping ``live`` chunks."""
        self.close()
        if not live:
            self.path.unlink()
            return None, {}
        if len(live) == len(self.entries):
            hexd = self._hash.hexdigest()
            os.replace(self.path, blob_dir / hexd)
            blob = Blob("sha256:" + hexd, self._size, self._raw, Compression.ZSTD)
            return blob, dict(self.entries)
        placed: dict[bytes, Placed] = {}
        h = hashlib.sha256()
        tmp = self.path.with_suffix(".blob")
        size = raw = 0
        with open(self.path, "rb") as src, open(tmp, "wb") as dst:
            for digest, p in self.entries.items():  # insertion order = spool order
                if digest not in live:
                    continue
                src.seek(p.compressed_offset)
                data = src.read(p.compressed_size)
                dst.write(data)
                h.update(data)
                placed[digest] = Placed(
                    size, p.compressed_size, raw, p.uncompressed_size, p.compressed
                )
                size += p.compressed_size
                raw += self.slot_size
        self.path.unlink()
        hexd = h.hexdigest()
        os.replace(tmp, blob_dir / hexd)
        return Blob("sha256:" + hexd, size, raw, Compression.ZSTD), placed
