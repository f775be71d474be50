"""Chunk store throughput over a local blob: ``python -m tests.storage.bench_store [MiB]``.

Cold (fetch + zstd + blake3 + cache write), restart (hash the cache once), warm (verified
hits), for the blocking and the async path. 1 MiB chunks, half compressible, half random.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.storage.blobs import build_image, payloads
from virtiofsd_nydus.storage import ChunkStore, LocalFsBackend

CHUNK = 1 << 20


def _timed(what: str, mib: int, fn: Callable[[], object]) -> None:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    print(f"{what:<34} {mib / dt:8.0f} MiB/s  ({dt * 1000:.0f} ms)")


def main(mib: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        img = build_image(root / "img", [payloads(3, mib, CHUNK)], slot=CHUNK)
        n = len(img.chunks)
        backend = LocalFsBackend(img.blob_dir)

        def store(cache: str) -> ChunkStore:
            return ChunkStore(img.chunks, img.blobs, [backend], root / cache, slot_size=CHUNK)

        s = store("c1")
        _timed("cold, read_chunk one by one", mib, lambda: [s.read_chunk(i) for i in range(n)])
        _timed("warm, read_chunk (verified hits)", mib, lambda: [s.read_chunk(i) for i in range(n)])
        s.close()
        s = store("c1")
        _timed("restart, re-verify from cache", mib, lambda: s.ensure_range(range(n)))
        s.close()
        s = store("c2")
        _timed(
            "cold, async ensure_chunks (merged)",
            mib,
            lambda: asyncio.run(s.ensure_chunks(range(n))),
        )
        print(f"  backend reads: {s.metrics.backend_reads}, fetched {s.metrics.bytes_fetched} B")
        s.close()
        backend.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 256)
