"""A split virtqueue in guest memory, driven from the driver (guest) side.

Everything is raw on purpose: descriptors can be edited to anything (loops, bad addresses,
lying lengths) for fuzzing, and the hot paths expose memoryviews for batched access.
x86 keeps plain stores in order, so "release" is program order; the only reordering that
matters is a later load passing an earlier store, which `fence()` prevents.
"""

from __future__ import annotations

import array
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from .memory import GuestMemory, GuestRegion

DESC = struct.Struct("<QIHH")
F_NEXT = 1
F_WRITE = 2
F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1

_fence_lock = threading.Lock()


def fence() -> None:
    """Full memory barrier: an uncontended lock is a LOCK-prefixed atomic on x86."""
    _fence_lock.acquire()
    _fence_lock.release()


def need_event(event: int, new: int, old: int) -> bool:
    """virtio's vring_need_event(): did the index pass EVENT going from OLD to NEW?"""
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


@dataclass(frozen=True)
class Buf:
    gpa: int
    length: int
    writable: bool = False


class SplitRing:
    def __init__(
        self,
        mem: GuestMemory,
        size: int,
        *,
        event_idx: bool,
        region: GuestRegion | None = None,
    ) -> None:
        if size & (size - 1) or not 1 <= size <= 32768:
            raise ValueError(f"queue size {size} is not a power of two <= 32768")
        self.mem = mem
        self.size = size
        self.mask = size - 1
        self.event_idx = event_idx
        self.desc_gpa = mem.alloc(16 * size, 4096, region)
        self.avail_gpa = mem.alloc(6 + 2 * size, 4096, region)
        self.used_gpa = mem.alloc(6 + 8 * size, 4096, region)
        self.desc_view = mem.view(self.desc_gpa, 16 * size)
        self.desc_u32 = self.desc_view.cast("I")  # [4i + 2] is descriptor i's len
        # avail as u16s: [0] flags, [1] idx, [2..size+1] ring, [size+2] used_event
        self.avail = mem.view(self.avail_gpa, 6 + 2 * size).cast("H")
        # used as u32s: [0] flags|idx<<16, [1+2k] id, [2+2k] len; avail_event apart
        self.used_words = mem.view(self.used_gpa, 4 + 8 * size).cast("I")
        self.used_u16 = mem.view(self.used_gpa, 4).cast("H")
        self.avail_event_view = mem.view(self.used_gpa + 4 + 8 * size, 2).cast("H")
        self.avail_idx = 0  # our shadow of avail->idx
        self.last_used = 0  # next used entry we have not consumed
        self.free: list[int] = list(range(size - 1, -1, -1))
        self.chains: dict[int, list[int]] = {}
        self._indirect: dict[int, tuple[int, int]] = {}  # head -> (gpa, capacity)
        self.reset_memory()

    def reset_memory(self) -> None:
        self.desc_view[:] = bytes(len(self.desc_view))
        self.avail[:] = memoryview(bytes(len(self.avail) * 2)).cast("H")
        self.used_words[:] = memoryview(bytes(len(self.used_words) * 4)).cast("I")
        self.avail_event_view[0] = 0

    # ------------------------------------------------------------ raw access

    def set_desc(self, i: int, addr: int, length: int, flags: int = 0, next_: int = 0) -> None:
        DESC.pack_into(self.desc_view, 16 * i, addr, length, flags, next_)

    def get_desc(self, i: int) -> tuple[int, int, int, int]:
        addr, length, flags, nxt = DESC.unpack_from(self.desc_view, 16 * i)
        return int(addr), int(length), int(flags), int(nxt)

    def write_table(self, gpa: int, descs: Sequence[tuple[int, int, int, int]]) -> None:
        """Write an arbitrary (indirect) descriptor table at GPA."""
        view = self.mem.view(gpa, 16 * len(descs))
        for k, (addr, length, flags, nxt) in enumerate(descs):
            DESC.pack_into(view, 16 * k, addr, length, flags, nxt)

    @property
    def avail_flags(self) -> int:
        return int(self.avail[0])

    @avail_flags.setter
    def avail_flags(self, value: int) -> None:
        self.avail[0] = value

    def used_idx(self) -> int:
        return int(self.used_u16[1])

    def used_flags(self) -> int:
        return int(self.used_u16[0])

    def avail_event(self) -> int:
        return int(self.avail_event_view[0])

    def set_used_event(self, value: int) -> None:
        self.avail[self.size + 2] = value & 0xFFFF

    # ------------------------------------------------------------ submit / reap

    def put_avail(self, heads: Sequence[int]) -> tuple[int, int]:
        """Append HEADS to the avail ring and publish them; return (old, new) avail idx."""
        old = self.avail_idx
        n = len(heads)
        start = old & self.mask
        first = min(n, self.size - start)
        if n == 1:
            self.avail[2 + start] = heads[0]
        else:
            self.avail[2 + start : 2 + start + first] = _u16s(heads[:first])
            if first < n:
                self.avail[2 : 2 + n - first] = _u16s(heads[first:])
        new = (old + n) & 0xFFFF
        self.avail[1] = new  # after the ring entries: x86 keeps the stores in order
        self.avail_idx = new
        return old, new

    def kick_needed(self, old: int, new: int) -> bool:
        fence()  # the avail->idx store must be visible before we read the device's hint
        if self.event_idx:
            return need_event(self.avail_event(), new, old)
        return not self.used_flags() & USED_F_NO_NOTIFY

    def pending_used(self) -> int:
        return (self.used_idx() - self.last_used) & 0xFFFF

    def pop_used(self, limit: int | None = None) -> list[tuple[int, int]]:
        """Consume used entries (id, len) up to the device's used->idx."""
        n = self.pending_used()
        if limit is not None:
            n = min(n, limit)
        out = []
        words = self.used_words
        for k in range(n):
            slot = (self.last_used + k) & self.mask
            out.append((int(words[1 + 2 * slot]), int(words[2 + 2 * slot])))
        self.last_used = (self.last_used + n) & 0xFFFF
        return out

    def arm(self, want: int = 1) -> bool:
        """Ask for a call after WANT more used entries; True if they are already there."""
        if self.event_idx:
            self.set_used_event(self.last_used + want - 1)
        fence()
        return self.pending_used() >= want

    # ------------------------------------------------------------ chains

    def reserve(self, indices: Sequence[int]) -> bool:
        """Take exactly these descriptor indices off the free list, if all are free."""
        want = set(indices)
        if not want <= set(self.free):
            return False
        self.free = [i for i in self.free if i not in want]
        return True

    def add_chain(self, bufs: Sequence[Buf], indices: Sequence[int] | None = None) -> int:
        """Descriptors for BUFS linked with NEXT; return the head (not yet made available).

        INDICES: descriptors already `reserve`d to use instead of free ones.
        """
        if indices is not None:
            if len(indices) != len(bufs):
                raise ValueError(f"{len(indices)} indices for {len(bufs)} buffers")
            idx = list(indices)
        elif not bufs or len(bufs) > len(self.free):
            raise MemoryError(f"{len(bufs)} descriptors wanted, {len(self.free)} free")
        else:
            idx = [self.free.pop() for _ in bufs]
        for k, b in enumerate(bufs):
            last = k == len(bufs) - 1
            flags = (F_WRITE if b.writable else 0) | (0 if last else F_NEXT)
            self.set_desc(idx[k], b.gpa, b.length, flags, 0 if last else idx[k + 1])
        self.chains[idx[0]] = idx
        return idx[0]

    def add_indirect(self, bufs: Sequence[Buf], head: int | None = None) -> int:
        """One descriptor (HEAD if reserved, else a free one) pointing at a table of BUFS."""
        head = self.add_chain([Buf(0, 0)], None if head is None else [head])
        gpa, cap = self._indirect.get(head, (0, 0))
        if cap < len(bufs):
            cap = max(16, len(bufs))
            gpa = self.mem.alloc(16 * cap, 16, self.mem.region_of(self.desc_gpa))
            self._indirect[head] = (gpa, cap)
        table = []
        for k, b in enumerate(bufs):
            last = k == len(bufs) - 1
            flags = (F_WRITE if b.writable else 0) | (0 if last else F_NEXT)
            table.append((b.gpa, b.length, flags, 0 if last else k + 1))
        self.write_table(gpa, table)
        self.set_desc(head, gpa, 16 * len(bufs), F_INDIRECT, 0)
        return head

    def take(self, n: int) -> list[int]:
        """Reserve N descriptor indices for raw editing (give them back with `give`)."""
        if n > len(self.free):
            raise MemoryError(f"{n} descriptors wanted, {len(self.free)} free")
        return [self.free.pop() for _ in range(n)]

    def give(self, indices: Sequence[int]) -> None:
        self.free.extend(indices)

    def free_chain(self, head: int) -> None:
        self.free.extend(reversed(self.chains.pop(head)))

    def restart(self) -> None:
        """Forget in-flight chains and zero the rings (for a re-setup from index 0)."""
        self.avail_idx = 0
        self.last_used = 0
        self.free = list(range(self.size - 1, -1, -1))
        self.chains.clear()
        self.reset_memory()


def _u16s(values: Sequence[int]) -> memoryview:
    return memoryview(array.array("H", values))
