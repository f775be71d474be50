"""python -m tests.fuse.bench: per-request cost of the Python FUSE path (Server.handle over
ImageFS, chunks already in memory), no transport. Best of 3 runs per request kind."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from virtiofsd_nydus.fuse import abi
from virtiofsd_nydus.fuse.abi import Opcode
from virtiofsd_nydus.fuse.imagefs import ImageFS
from virtiofsd_nydus.fuse.server import Server

from .images import CS, File, build
from .wire import BIG, KERNEL_FLAGS, cstr, init_body, read_in, request


class _Memo:
    """Chunks decoded once, then served from memory: the bench measures FUSE, not zstd."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.cache: dict[int, bytes] = {}

    def read_chunk(self, i: int) -> bytes:
        data = self.cache.get(i)
        if data is None:
            data = self.cache[i] = self.inner.read_chunk(i)  # type: ignore[attr-defined]
        return data


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fusebench-"))
    tree = {
        b"dir": {b"f%04d" % i: File(b"x" * 10) for i in range(1000)},
        b"big": File(bytes(range(256)) * (CS * 64 // 256)),
    }
    img = build(tree, tmp)  # type: ignore[arg-type]
    srv = Server(ImageFS(img.bootstrap, _Memo(img.source)))
    srv.handle(request(Opcode.INIT, init_body(38, KERNEL_FLAGS)), BIG)
    d = img.bootstrap.resolve(b"/dir")
    big = img.bootstrap.resolve(b"/big")
    assert d is not None and big is not None
    cases = [
        ("LOOKUP", request(Opcode.LOOKUP, cstr(b"f0500"), nodeid=d), 20000),
        ("GETATTR", request(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0), nodeid=big), 20000),
        ("READ 4 KiB", request(Opcode.READ, read_in(0, 8192, 4096), nodeid=big), 20000),
        (
            "READ 128 KiB (32 chunks)",
            request(Opcode.READ, read_in(0, 0, 128 << 10), nodeid=big),
            2000,
        ),
        (
            "READDIR 4 KiB (128 names)",
            request(Opcode.READDIR, read_in(0, 100, 4096), nodeid=d),
            3000,
        ),
        ("READDIRPLUS 4 KiB", request(Opcode.READDIRPLUS, read_in(0, 100, 4096), nodeid=d), 3000),
    ]
    for name, raw, n in cases:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(n):
                srv.handle(raw, BIG)
            best = min(best, (time.perf_counter() - t) / n)
        print(f"{name:28s} {best * 1e6:8.2f} us/request  {1 / best:10.0f} requests/s")


if __name__ == "__main__":
    main()
