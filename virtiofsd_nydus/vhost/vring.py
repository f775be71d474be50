"""A virtqueue over the C core: pop chains in batches, complete them, notify the guest.

Chains are popped into batch buffers (a chain array plus an iovec pool) owned here; a batch
goes back to the free list once every chain in it is completed, so a request may be
answered long after it was popped. C fast paths take ``Virtqueue.cdata`` and
``Chain.cdata`` directly.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .._native import ffi, lib
from ..errors import GuestError, LocalError
from .memory import GuestMemory, strerror

_alloc = ffi.new_allocator(should_clear_after_alloc=False)
_ONE = (1).to_bytes(8, "little")


class FastDrain(Protocol):
    """A C fast path popping in place of ``vn_vq_pop`` (e.g. virtio-fs hot FUSE requests).

    It pops chains from ``vq`` itself, completes (pushes and notifies through ``call_fd``,
    -1 for none) those it can serve, and leaves the others in ``chains[0..n)`` with their
    iovecs in ``iovs``; it returns n. See virtiofsd_nydus/fuse/fastpath.py.
    """

    def drain(
        self, vq: Any, chains: Any, max_chains: int, iovs: Any, iov_cap: int, call_fd: int
    ) -> int: ...


class _Batch:
    __slots__ = ("chains", "iov_cap", "iovs", "outstanding")

    def __init__(self, max_chains: int, iov_cap: int) -> None:
        self.chains: Any = _alloc("struct vn_chain[]", max_chains)
        self.iovs: Any = _alloc("struct vn_iov[]", iov_cap)
        self.iov_cap = iov_cap
        self.outstanding = 0


class Chain:
    """One popped descriptor chain: a readable byte stream, then a writable one."""

    __slots__ = ("_batch", "_epoch", "_queue", "cdata", "done", "head", "read_len", "write_len")

    def __init__(self, queue: Virtqueue, batch: _Batch, index: int) -> None:
        self._queue = queue
        self._batch = batch
        self._epoch = queue.epoch
        self.cdata: Any = batch.chains + index
        self.head: int = self.cdata.head
        self.read_len: int = self.cdata.read_len
        self.write_len: int = self.cdata.write_len
        self.done = False

    def read(self, offset: int = 0, size: int = -1) -> bytes:
        """Copy ``size`` bytes (default: the rest) of the readable stream from ``offset``."""
        if size < 0:
            size = max(self.read_len - offset, 0)
        c = self.cdata
        if c.nread:
            first = c.iov[0]
            if offset + size <= first.len:  # the common case: one descriptor, one copy
                return ffi.buffer(first.base + offset, size)[:]  # type: ignore[no-any-return]
        buf = _alloc("uint8_t[]", size)
        got = lib.vn_chain_read(c, offset, buf, size)
        return ffi.buffer(buf, got)[:]  # type: ignore[no-any-return]

    def readinto(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        return int(lib.vn_chain_read(self.cdata, offset, ffi.from_buffer(buf), len(buf)))

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Scatter ``data`` into the writable stream at ``offset``; returns bytes written."""
        if type(data) is not bytes:  # bytes go straight in; others need a cdata view
            data = ffi.from_buffer(data)
        return int(lib.vn_chain_write(self.cdata, offset, data, len(data)))

    def write_buffers(self, offset: int, size: int) -> list[memoryview]:
        """The writable stream [offset, offset+size) as memoryviews (for os.preadv)."""
        count = int(self.cdata.nwrite) or 1
        iov = ffi.new("struct vn_iov[]", count)
        n = lib.vn_chain_write_iov(self.cdata, offset, size, iov, count)
        return [memoryview(ffi.buffer(iov[i].base, iov[i].len)) for i in range(max(n, 0))]

    def preadv(self, fd: int, file_offset: int, size: int, offset: int = 0) -> int:
        """Read a file straight into the writable stream; bytes read. Raises OSError."""
        got = int(lib.vn_chain_preadv(self.cdata, offset, fd, file_offset, size))
        if got < 0:
            raise OSError(-got, os.strerror(-got))
        return got


class Virtqueue:
    """One queue of a connection; started and stopped by the connection."""

    def __init__(self, index: int, memory: GuestMemory, batch_size: int = 64) -> None:
        self.index = index
        self.memory = memory
        self.batch_size = batch_size
        self.cdata: Any = ffi.new("struct vn_vq *")
        self.call_fd: int | None = None
        self.epoch = 0  # bumped at every start: completions of older chains are dropped
        self.running = False
        self.outstanding = 0  # popped chains not completed (across epochs)
        self.on_complete: Callable[[Virtqueue], None] | None = None  # schedule a notify
        self._free: list[_Batch] = []
        self._batch: _Batch | None = None
        self._iov_cap = 0
        self.fast_drain: FastDrain | None = None  # set by a device with a C fast path

    # ---- lifecycle ---------------------------------------------------------------------

    def start(
        self,
        size: int,
        base: int,
        desc: int,
        avail: int,
        used: int,
        event_idx: bool,
    ) -> None:
        rc = lib.vn_vq_start(
            self.cdata, self.memory.table, size, base, desc, avail, used, int(event_idx)
        )
        if rc < 0:
            raise GuestError(f"queue {self.index}: cannot start: {strerror(rc)}")
        self.epoch += 1
        self.running = True
        # Room for the longest legal chain, with slack for buffers crossing region edges.
        iov_cap = 2 * size + 64
        if iov_cap != self._iov_cap:
            self._iov_cap = iov_cap
            self._free.clear()
            self._batch = None

    def stop(self) -> int:
        """Stop using the ring (chains still out complete into nothing); last_avail_idx."""
        last = int(self.cdata.last_avail_idx)
        lib.vn_vq_stop(self.cdata)
        self.running = False
        self.epoch += 1
        return last

    def remap(self) -> None:
        """The memory table changed: find the ring tables again."""
        if self.running and lib.vn_vq_remap(self.cdata, self.memory.table) < 0:
            raise GuestError(f"queue {self.index}: {self.broken}")

    @property
    def broken(self) -> str | None:
        reason = int(self.cdata.broken)
        return strerror(reason) if reason else None

    @property
    def last_avail_idx(self) -> int:
        return int(self.cdata.last_avail_idx)

    @property
    def inflight(self) -> int:
        return int(self.cdata.inflight)

    # ---- requests ----------------------------------------------------------------------

    def pop(self) -> list[Chain]:
        """Pop up to ``batch_size`` chains. An empty list if none, or if the queue broke."""
        if not self.running:
            return []
        batch = self._batch
        if batch is None:
            batch = self._free.pop() if self._free else _Batch(self.batch_size, self._iov_cap)
            self._batch = batch
        if self.fast_drain is not None:
            call_fd = -1 if self.call_fd is None else self.call_fd
            n = self.fast_drain.drain(
                self.cdata, batch.chains, self.batch_size, batch.iovs, self._iov_cap, call_fd
            )
        else:
            n = lib.vn_vq_pop(self.cdata, batch.chains, self.batch_size, batch.iovs, self._iov_cap)
        if n <= 0:
            return []
        self._batch = None  # chains now point into it; the next pop takes a fresh one
        batch.outstanding = n
        self.outstanding += n
        return [Chain(self, batch, i) for i in range(n)]

    def complete(self, chain: Chain, written: int) -> None:
        """Return ``chain`` to the guest with ``written`` bytes of reply."""
        if chain.done:
            raise LocalError(f"queue {self.index}: chain {chain.head} completed twice")
        chain.done = True
        batch = chain._batch
        if chain._epoch == self.epoch and self.running:
            # The guest may trust the used length: never claim more than it gave us.
            written = min(max(written, 0), chain.write_len)
            rc = lib.vn_vq_push(self.cdata, chain.head, written)
            if rc < 0:
                raise LocalError(f"queue {self.index}: push: {strerror(rc)}")
        batch.outstanding -= 1
        self.outstanding -= 1
        if batch.outstanding == 0 and batch.iov_cap == self._iov_cap:
            self._free.append(batch)
        if self.on_complete is not None:
            self.on_complete(self)
        else:
            self.notify()

    def complete_many(self, done: Sequence[tuple[Chain, int]]) -> None:
        """Complete several chains with one used-index update (one barrier)."""
        live = [(c, w) for c, w in done if c._epoch == self.epoch and self.running]
        if len(live) != len(done) or len(live) < 2:
            for chain, written in done:
                self.complete(chain, written)
            return
        heads = _alloc("uint16_t[]", len(live))
        lens = _alloc("uint32_t[]", len(live))
        for i, (chain, written) in enumerate(live):
            if chain.done:
                raise LocalError(f"queue {self.index}: chain {chain.head} completed twice")
            heads[i] = chain.head
            lens[i] = min(max(written, 0), chain.write_len)
        rc = lib.vn_vq_push_many(self.cdata, heads, lens, len(live))
        if rc < 0:
            raise LocalError(f"queue {self.index}: push: {strerror(rc)}")
        for chain, _ in live:
            chain.done = True
            batch = chain._batch
            batch.outstanding -= 1
            if batch.outstanding == 0 and batch.iov_cap == self._iov_cap:
                self._free.append(batch)
        self.outstanding -= len(live)
        if self.on_complete is not None:
            self.on_complete(self)
        else:
            self.notify()

    def notify(self) -> None:
        """Interrupt the guest if it asked for one."""
        if self.call_fd is not None and self.running and lib.vn_vq_need_notify(self.cdata):
            # BlockingIOError: the counter is full, so an interrupt is pending anyway.
            with contextlib.suppress(BlockingIOError):
                os.write(self.call_fd, _ONE)

    def enable_notify(self) -> bool:
        """Ask for kicks again; True if chains arrived meanwhile (pop again)."""
        return self.running and bool(lib.vn_vq_enable_notify(self.cdata))

    def disable_notify(self) -> None:
        if self.running:
            lib.vn_vq_disable_notify(self.cdata)
