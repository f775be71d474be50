"""Guest RAM: memfd regions shared with the back-end, guest-physical addressing, a bump
allocator for rings and buffers."""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

from .vhost_msg import Region

# Fake front-end virtual addresses: the back-end only uses them to translate ring addresses,
# so any consistent value works. Keep them far from the guest-physical ones to catch mix-ups.
UADDR_BASE = 0x7F00_0000_0000


@dataclass
class GuestRegion:
    gpa: int
    size: int
    fd: int
    mm: mmap.mmap
    uaddr: int
    view: memoryview = field(init=False, repr=False)
    next_free: int = 0

    def __post_init__(self) -> None:
        self.view = memoryview(self.mm)

    def wire(self) -> Region:
        return Region(self.gpa, self.size, self.uaddr, 0)

    def contains(self, gpa: int, length: int = 1) -> bool:
        return self.gpa <= gpa and gpa + length <= self.gpa + self.size

    def close(self) -> None:
        os.close(self.fd)
        try:
            self.view.release()
            self.mm.close()
        except BufferError:
            pass  # ring views still point into it; the mapping goes when they are collected


class GuestMemory:
    def __init__(self) -> None:
        self.regions: list[GuestRegion] = []

    def add(self, size: int, gpa: int | None = None) -> GuestRegion:
        """A new memfd region; by default placed right after the highest one (1 MiB aligned)."""
        if gpa is None:
            top = max((r.gpa + r.size for r in self.regions), default=0)
            gpa = (top + 0xFFFFF) & ~0xFFFFF
        fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        region = GuestRegion(gpa, size, fd, mm, UADDR_BASE + gpa)
        self.regions.append(region)
        return region

    def remove(self, region: GuestRegion) -> None:
        self.regions.remove(region)
        region.close()

    def region_of(self, gpa: int, length: int = 1) -> GuestRegion:
        for r in self.regions:
            if r.contains(gpa, length):
                return r
        raise ValueError(f"guest address {gpa:#x}+{length} is not in one region")

    def uaddr(self, gpa: int) -> int:
        return self.region_of(gpa).uaddr + (gpa - self.region_of(gpa).gpa)

    def view(self, gpa: int, length: int) -> memoryview:
        r = self.region_of(gpa, length)
        off = gpa - r.gpa
        return r.view[off : off + length]

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def alloc(self, size: int, align: int = 64, region: GuestRegion | None = None) -> int:
        """Bump-allocate SIZE bytes (never freed) in REGION (default: the first one)."""
        r = region or self.regions[0]
        start = (r.gpa + r.next_free + align - 1) & ~(align - 1)
        if start + size > r.gpa + r.size:
            raise MemoryError(f"guest region at {r.gpa:#x} is full ({size} bytes wanted)")
        r.next_free = start + size - r.gpa
        return start

    def close(self) -> None:
        for r in self.regions:
            r.close()
        self.regions.clear()
