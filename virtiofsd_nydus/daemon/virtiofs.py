"""The virtio-fs device: FUSE requests from virtqueues to a FUSE server, replies back.

Queue 0 is hiprio (FORGET, BATCH_FORGET: no reply, used length 0); queues 1..N carry
requests. With a thread pool, requests run on its workers (a cache miss may block on a
backend) and complete on the event loop, since a queue is not thread-safe; without one
they run inline on the loop, as virtiofsd's default single worker does.

With a ``FastPath`` (fuse/fastpath.py), request queues pop through its C drain: hot
requests (LOOKUP, GETATTR, READ of cached chunks, OPEN, FLUSH, RELEASE and the directory
ops) are answered in C, and only the rest reach ``handle`` as Chain objects.

Serving an image, the device keeps the bootstrap's resident pages in check
(``residency.ResidentBudget``): after every pop and every batch Python answers, it trims
the mapping once this process's file pages have grown by more than ``bootstrap_budget``.
"""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from ..fuse.fastpath import FastPath
from ..fuse.imagefs import ImageFS
from ..fuse.server import Server
from ..vhost.device import VirtioDevice
from ..vhost.vring import Chain, Virtqueue
from .residency import DEFAULT_BUDGET, ResidentBudget

log = structlog.get_logger(__name__)

VIRTIO_ID_FS = 26
HIPRIO_QUEUE = 0
TAG_SIZE = 36


def config_space(tag: str, num_request_queues: int) -> bytes:
    """struct virtio_fs_config: u8 tag[36] (not NUL-terminated when full), le32 queues."""
    raw = tag.encode()
    if not raw or len(raw) > TAG_SIZE:
        raise ValueError(f"tag must be 1..{TAG_SIZE} bytes")
    return raw.ljust(TAG_SIZE, b"\0") + struct.pack("<I", num_request_queues)


def _complete(
    queue: Virtqueue, chain: Chain, budget: ResidentBudget | None, fut: asyncio.Future[int]
) -> None:
    try:
        written = fut.result()
    except Exception:  # _serve never raises on purpose: a bug; answer nothing, log it
        log.exception("virtio-fs request failed")
        written = 0
    queue.complete(chain, written)
    if budget is not None:
        budget.check()


class _BudgetedDrain:
    """The fast path's drain, then a look at the bootstrap's resident pages."""

    def __init__(self, fastpath: FastPath, budget: ResidentBudget) -> None:
        self.fastpath = fastpath
        self.budget = budget

    def drain(
        self, vq: Any, chains: Any, max_chains: int, iovs: Any, iov_cap: int, call_fd: int
    ) -> int:
        n = self.fastpath.drain(vq, chains, max_chains, iovs, iov_cap, call_fd)
        self.budget.check()
        return n


class VirtioFsDevice(VirtioDevice):
    def __init__(
        self,
        server: Server,
        *,
        num_request_queues: int = 1,
        tag: str | None = None,
        thread_pool_size: int = 0,
        fastpath: FastPath | None = None,
        bootstrap_budget: int | None = DEFAULT_BUDGET,
    ) -> None:
        if not 1 <= num_request_queues <= 64:
            raise ValueError("num_request_queues must be 1..64")
        self.server = server
        self.fastpath = fastpath  # owned: closed with the device
        self.num_queues = 1 + num_request_queues
        self.max_queue_size = 1024
        self._config = config_space(tag, num_request_queues) if tag else None
        self._logged: tuple[dict[str, int], dict[str, int]] = ({}, {})
        self._pool = (
            ThreadPoolExecutor(thread_pool_size, thread_name_prefix="fuse")
            if thread_pool_size > 0
            else None
        )
        # Bytes the mapped bootstrap may add to our RSS before it is trimmed (None: never).
        self.budget = (
            ResidentBudget.for_bootstrap(server.fs.bs, bootstrap_budget)
            if isinstance(server.fs, ImageFS)
            else None
        )

    def config(self) -> bytes | None:
        return self._config

    def queue_started(self, queue: Virtqueue) -> None:
        if self.fastpath is not None and queue.index != HIPRIO_QUEUE:
            budget = self.budget
            queue.fast_drain = (
                self.fastpath if budget is None else _BudgetedDrain(self.fastpath, budget)
            )

    def handle(self, queue: Virtqueue, chains: Sequence[Chain]) -> None:
        if self._pool is None:
            for chain in chains:
                queue.complete(chain, self._serve(chain))
            if self.budget is not None:
                self.budget.check()
            return
        loop = asyncio.get_running_loop()
        for chain in chains:
            fut = loop.run_in_executor(self._pool, self._serve, chain)
            fut.add_done_callback(functools.partial(_complete, queue, chain, self.budget))

    def _serve(self, chain: Chain) -> int:
        """Answer one chain; the number of reply bytes written into it."""
        reply = self.server.handle(chain.read(), chain.write_len)
        if self.fastpath is not None:
            self.fastpath.sync_session()  # before the reply: INIT/DESTROY reach C first
        if reply is None:
            return 0
        return chain.write(reply)

    def log_stats(self) -> None:
        """One log line of the requests served so far (Python: by op, with errors; C: by op),
        at each session's end; skipped when nothing changed since the last one."""
        stats = self.server.stats()
        py = {name: n for name, (n, _) in stats.items()}
        errors = {name: e for name, (_, e) in stats.items() if e}
        fast = {}
        if self.fastpath is not None:
            fast = {k.removeprefix("served_"): v for k, v in self.fastpath.stats().items() if v}
        if (py or fast) and (py, fast) != self._logged:
            self._logged = (py, fast)
            trims = self.budget.trims if self.budget is not None else 0
            log.info(
                "fuse requests served",
                python=py,
                errors=errors,
                fast_path=fast,
                bootstrap_trims=trims,
            )

    def reset(self) -> None:
        # A new connection or a device reset means a new guest session: the next INIT
        # resets the FUSE session anyway, but forget lookup counts and handles now.
        self.log_stats()
        self.server.reset()
        if self.fastpath is not None:
            self.fastpath.sync_session()

    def close(self) -> None:
        self.log_stats()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self.fastpath is not None:
            self.fastpath.close()
        if self.budget is not None:
            self.budget.close()
