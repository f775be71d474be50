"""Keep the mapped bootstrap's resident pages in this process near a budget.

Serving a big image faults the bootstrap's file pages into the daemon's page tables, and
each fault maps a whole page-cache folio (up to 2 MiB on a 6.x kernel with large folios;
MADV_RANDOM does not shrink that), so random LOOKUPs soon map the entire file. Those pages
count in VmRSS and in the OOM killer's score (MM_FILEPAGES). ``ResidentBudget.check``,
called by the device after each batch of requests, reads the process's resident
file + shmem pages (/proc/self/statm, field 3: a counter read, no page-table walk) and,
once they have grown by more than the budget since the last trim, drops the bootstrap's
page-table entries (``Bootstrap.trim``: MADV_DONTNEED). The pages stay in the page cache,
so the next access is a minor fault. Called on the event loop thread only.
"""

from __future__ import annotations

import mmap
import os

import structlog

from ..format.reader import Bootstrap

log = structlog.get_logger(__name__)

DEFAULT_BUDGET = 32 << 20  # bytes of mapped bootstrap (and other file/shmem growth)
STATM = "/proc/self/statm"


class ResidentBudget:
    """Trim ``bs`` whenever resident file + shmem pages grew by more than ``budget`` bytes
    since the last trim. Growth of guest memory (shmem) counts too: it only makes a trim
    come early, which costs a few minor faults."""

    def __init__(self, bs: Bootstrap, budget: int = DEFAULT_BUDGET, statm: str = STATM) -> None:
        if budget <= 0:
            raise ValueError("budget must be > 0 (no budget: make no ResidentBudget)")
        self.bs = bs
        self.budget = budget
        self._limit = max(1, budget // mmap.PAGESIZE)  # pages
        self._fd = os.open(statm, os.O_RDONLY | os.O_CLOEXEC)
        self._base = 0
        self.checks = 0
        self.trims = 0
        self.trim()  # start from nothing mapped (opening touched the header)

    @classmethod
    def for_bootstrap(cls, bs: Bootstrap, budget: int | None) -> ResidentBudget | None:
        """A budget for a mapped ``bs``; None without one (no budget, bytes, no /proc)."""
        if not budget or not bs.mapped:
            return None
        try:
            return cls(bs, budget)
        except OSError as exc:
            log.warning("bootstrap RSS budget off: cannot read %s: %s", STATM, exc.strerror)
            return None

    def _shared_pages(self) -> int:
        return int(os.pread(self._fd, 256, 0).split()[2])

    def check(self) -> bool:
        """Trim if over budget; True if it trimmed. A few microseconds (one pread)."""
        if self._fd < 0:
            return False
        self.checks += 1
        shared = self._shared_pages()
        if shared - self._base <= self._limit:
            if shared < self._base:  # reclaim or unmapping elsewhere: budget from here
                self._base = shared
            return False
        self.trim()
        return True

    def trim(self) -> None:
        """Trim now and measure the new base."""
        if self._fd < 0 or not self.bs.trim():
            return
        self.trims += 1
        self._base = self._shared_pages()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
