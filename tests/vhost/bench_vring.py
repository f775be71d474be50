"""Micro-benchmark of the virtqueue core: `python -m tests.vhost.bench_vring`.

A 1024-entry ring full of FUSE-sized chains (40-byte request, 16 + 4096-byte reply
buffers). Measures pop + push only (the guest's re-publishing is not timed), best of 200
rounds, through (a) the Python API, one call per request, and (b) the C batch calls a fast
path uses.
"""

from __future__ import annotations

import os
import struct
import time

from virtiofsd_nydus._native import ffi, lib
from virtiofsd_nydus.vhost.memory import GuestMemory
from virtiofsd_nydus.vhost.message import MemoryRegion
from virtiofsd_nydus.vhost.vring import Virtqueue

from .driver import NEXT, WRITE, Driver

N = 1024
ROUNDS = 200


def setup() -> tuple[GuestMemory, Driver, Virtqueue, bytes]:
    fd = os.memfd_create("bench")
    os.ftruncate(fd, 64 << 20)
    mem = GuestMemory()
    mem.add(MemoryRegion(0, 64 << 20, 0x7F00_0000_0000, 0), fd)
    os.close(fd)
    drv = Driver(mem, N)
    for h in range(N // 2):
        buf = 0x100000 + h * 0x2000
        drv.set_desc(2 * h, buf, 40, NEXT, 2 * h + 1)
        drv.set_desc(2 * h + 1, buf + 0x40, 16 + 4096, WRITE)
    vq = Virtqueue(1, mem, batch_size=64)
    vq.start(N, 0, drv.desc, drv.avail, drv.used, True)
    ring = struct.pack(f"<{N}H", *[2 * (i % (N // 2)) for i in range(N)])
    return mem, drv, vq, ring


def publish(drv: Driver, ring: bytes, count: int) -> None:
    drv.mem.view(drv.avail + 4, 2 * N)[:] = ring
    drv.set_avail_idx(drv.avail_idx + count)


def bench_python() -> float:
    mem, drv, vq, ring = setup()
    reply = bytes(16)
    best = float("inf")
    for _ in range(ROUNDS):
        publish(drv, ring, N // 2)
        t = time.perf_counter()
        while chains := vq.pop():
            for c in chains:
                c.read()
                vq.complete(c, c.write(reply))
        best = min(best, time.perf_counter() - t)
    mem.close()
    return (N // 2) / best


def bench_c_batch() -> float:
    mem, drv, vq, ring = setup()
    chains = ffi.new("struct vn_chain[]", 64)
    iovs = ffi.new("struct vn_iov[]", 4096)
    heads = ffi.new("uint16_t[]", 64)
    lens = ffi.new("uint32_t[]", 64)
    best = float("inf")
    for _ in range(ROUNDS):
        publish(drv, ring, N // 2)
        t = time.perf_counter()
        while (n := lib.vn_vq_pop(vq.cdata, chains, 64, iovs, 4096)) > 0:
            for i in range(n):
                heads[i] = chains[i].head
                lens[i] = 16
            lib.vn_vq_push_many(vq.cdata, heads, lens, n)
            lib.vn_vq_need_notify(vq.cdata)
        best = min(best, time.perf_counter() - t)
    mem.close()
    return (N // 2) / best


if __name__ == "__main__":
    print(f"python API, per request (pop+read+write+complete): {bench_python():,.0f} req/s")
    print(f"C batch calls (pop 64 + push_many), Python loop:    {bench_c_batch():,.0f} req/s")
