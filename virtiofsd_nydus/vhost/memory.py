"""Guest memory: the front-end's shared regions mapped into this process.

Python keeps the mappings; the C table (``struct vn_memtable``) holds the lookup that the
virtqueue core uses for every descriptor. A removed region leaves the table at once but
stays mapped until :meth:`GuestMemory.release_retired` (called when no chain is in flight),
so a request still being answered never writes into unmapped memory.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Any

from .._native import ffi, lib
from ..errors import GuestError
from .message import MemoryRegion

MAX_REGIONS: int = lib.VN_MAX_REGIONS


def strerror(reason: int) -> str:
    """The text of a C core reason code (``enum vn_vq_error``)."""
    return str(ffi.string(lib.vn_vq_strerror(reason)).decode())


@dataclass(frozen=True)
class _Mapping:
    region: MemoryRegion
    host: Any  # cdata uint8_t *


class GuestMemory:
    """The region table of one front-end connection."""

    def __init__(self) -> None:
        self.table: Any = ffi.new("struct vn_memtable *")
        lib.vn_mem_init(self.table)
        self._mapped: dict[tuple[int, int], _Mapping] = {}
        self._retired: list[_Mapping] = []

    def __len__(self) -> int:
        return len(self._mapped)

    @property
    def regions(self) -> list[MemoryRegion]:
        return sorted((m.region for m in self._mapped.values()), key=lambda r: r.gpa)

    def add(self, region: MemoryRegion, fd: int) -> None:
        """Map ``fd`` at ``region.mmap_offset`` and enter it in the table (fd stays open)."""
        # A mapping past the end of its file would SIGBUS on first access: refuse it now.
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise GuestError(f"memory region {region}: {exc.strerror}") from exc
        if stat.S_ISREG(st.st_mode) and region.mmap_offset + region.size > st.st_size:
            raise GuestError(f"memory region {region}: its file has only {st.st_size} bytes")
        host = ffi.new("uint8_t **")
        rc = lib.vn_map(fd, region.mmap_offset, region.size, host)
        if rc < 0:
            raise GuestError(f"cannot map memory region {region}: {os.strerror(-rc)}")
        rc = lib.vn_mem_add(self.table, region.gpa, region.size, region.uaddr, host[0])
        if rc < 0:
            lib.vn_unmap(host[0], region.mmap_offset, region.size)
            why = "overlaps another region" if rc == -errno.EEXIST else os.strerror(-rc)
            raise GuestError(f"memory region {region}: {why}")
        self._mapped[(region.gpa, region.size)] = _Mapping(region, host[0])

    def remove(self, gpa: int, size: int) -> None:
        mapping = self._mapped.pop((gpa, size), None)
        if mapping is None:
            raise GuestError(f"no memory region at {gpa:#x}+{size:#x}")
        lib.vn_mem_remove(self.table, gpa, size)
        self._retired.append(mapping)

    def clear(self) -> None:
        for gpa, size in list(self._mapped):
            self.remove(gpa, size)

    def release_retired(self) -> None:
        """Unmap removed regions; only call when no popped chain is outstanding."""
        for m in self._retired:
            lib.vn_unmap(m.host, m.region.mmap_offset, m.region.size)
        self._retired.clear()

    def close(self) -> None:
        self.clear()
        self.release_retired()

    def uva_to_gpa(self, uva: int, size: int) -> int | None:
        out = ffi.new("uint64_t *")
        return int(out[0]) if lib.vn_mem_uva_to_gpa(self.table, uva, size, out) == 0 else None

    def translate(self, gpa: int, size: int) -> list[memoryview]:
        """Guest range [gpa, gpa+size) as writable memoryviews, split at region edges."""
        cap = max(len(self._mapped), 1)
        iov = ffi.new("struct vn_iov[]", cap)
        n = lib.vn_mem_translate(self.table, gpa, size, iov, cap)
        if n < 0:
            raise GuestError(f"guest range {gpa:#x}+{size:#x}: {strerror(n)}")
        return [memoryview(ffi.buffer(iov[i].base, iov[i].len)) for i in range(n)]

    def view(self, gpa: int, size: int) -> memoryview:
        """Guest memory [gpa, gpa+size) inside one region, as a writable memoryview."""
        host = lib.vn_mem_host(self.table, gpa, size)
        if host == ffi.NULL:
            raise GuestError(f"guest range {gpa:#x}+{size:#x} is not inside one region")
        return memoryview(ffi.buffer(host, size))
