"""A hand-made guest for the vring tests: memfd-backed memory and a split ring laid out by
struct.pack_into, the way a virtio driver would."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from virtiofsd_nydus.vhost.memory import GuestMemory
from virtiofsd_nydus.vhost.message import MemoryRegion

NEXT, WRITE, INDIRECT = 1, 2, 4
MIB = 1 << 20
UADDR_BASE = 0x7F00_0000_0000


@dataclass(frozen=True)
class Layout:
    """Two adjacent regions (split buffers) and one behind a hole."""

    regions: tuple[tuple[int, int, int], ...] = (  # gpa, size, file offset
        (0x0, MIB, 0),
        (MIB, MIB, MIB),
        (4 * MIB, MIB, 2 * MIB),
    )


def make_memory(layout: Layout = Layout()) -> tuple[GuestMemory, int]:
    fd = os.memfd_create("guest")
    total = max(off + size for _, size, off in layout.regions)
    os.ftruncate(fd, total)
    mem = GuestMemory()
    for gpa, size, off in layout.regions:
        mem.add(MemoryRegion(gpa, size, UADDR_BASE + gpa, off), fd)
    return mem, fd


class Driver:
    """The guest side of one split ring at fixed guest-physical addresses."""

    def __init__(self, mem: GuestMemory, size: int, desc: int = 0x1000) -> None:
        self.mem = mem
        self.size = size
        self.desc = desc
        self.avail = desc + 16 * size
        self.used = (self.avail + 6 + 2 * size + 3) & ~3
        self.avail_idx = 0
        self.used_seen = 0

    def w(self, gpa: int, fmt: str, *values: int) -> None:
        struct.pack_into("<" + fmt, self.mem.view(gpa, struct.calcsize("<" + fmt)), 0, *values)

    def r(self, gpa: int, fmt: str) -> tuple[int, ...]:
        return struct.unpack_from("<" + fmt, self.mem.view(gpa, struct.calcsize("<" + fmt)))

    def set_desc(
        self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0, table: int | None = None
    ) -> None:
        self.w((self.desc if table is None else table) + 16 * i, "QIHH", addr, length, flags, nxt)

    def publish(self, *heads: int) -> None:
        for h in heads:
            self.w(self.avail + 4 + 2 * (self.avail_idx % self.size), "H", h)
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.w(self.avail + 2, "H", self.avail_idx)

    def set_avail_idx(self, idx: int) -> None:
        self.avail_idx = idx & 0xFFFF
        self.w(self.avail + 2, "H", self.avail_idx)

    def set_avail_flags(self, flags: int) -> None:
        self.w(self.avail, "H", flags)

    def set_used_event(self, value: int) -> None:
        self.w(self.avail + 4 + 2 * self.size, "H", value)

    def used_idx(self) -> int:
        return self.r(self.used + 2, "H")[0]

    def used_flags(self) -> int:
        return self.r(self.used, "H")[0]

    def avail_event(self) -> int:
        return self.r(self.used + 4 + 8 * self.size, "H")[0]

    def used_elem(self, i: int) -> tuple[int, int]:
        id_, ln = self.r(self.used + 4 + 8 * (i % self.size), "II")
        return id_, ln

    def snapshot(self) -> list[bytes]:
        return [bytes(self.mem.view(r.gpa, r.size)) for r in self.mem.regions]
