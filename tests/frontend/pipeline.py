"""Many requests in flight at a Python cost per batch, not per request.

Each slot owns one pre-built descriptor chain (in-buffer + out-buffer) that is re-used for
its whole life: a round trip only rewrites what changes (an offset, a name) and the avail
ring entries, which are copied in one slice per batch. Used entries are read as strided
memoryview slices; lengths are checked against the expected ones in one comparison.
"""

from __future__ import annotations

import array
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import fuse_abi as fa
from .conn import BackendGone
from .frontend import Frontend, Queue, wait_any
from .vring import Buf, SplitRing

# prepare(pipeline, slots) rewrites the requests of SLOTS before they are resubmitted.
Prepare = Callable[["Pipeline", Sequence[int]], None]


class PipelineError(RuntimeError):
    """A reply in the hot loop was not what the workload expects (wrong length / error)."""


@dataclass
class Slot:
    head: int
    in_gpa: int
    out_gpa: int


class Pipeline:
    """DEPTH fixed request chains on one queue, all built from one template request."""

    def __init__(
        self,
        fe: Frontend,
        queue: int,
        depth: int,
        template: bytes,
        out_size: int,
        *,
        in_room: int = 0,
        expect_len: int | None = None,
        min_len: int = fa.OUT_HEADER.size,
        prepare: Prepare | None = None,
        indirect: bool = False,
    ) -> None:
        self.fe = fe
        self.q: Queue = fe.queues[queue]
        self.ring: SplitRing = self.q.ring
        self.depth = depth
        per_chain = 1 if indirect else 2
        if depth * per_chain > len(self.ring.free):
            raise ValueError(f"depth {depth} needs {depth * per_chain} free descriptors")
        self.in_stride = (max(len(template), in_room) + 63) & ~63
        self.out_stride = (fa.OUT_HEADER.size + out_size + 63) & ~63
        self.out_len = fa.OUT_HEADER.size + out_size
        mem = fe.mem
        self.in_base = mem.alloc(self.in_stride * depth, 4096)
        self.out_base = mem.alloc(self.out_stride * depth, 4096)
        self.in_view = mem.view(self.in_base, self.in_stride * depth)
        self.in_q = self.in_view.cast("Q")  # u64 view for batched field updates
        self.in_u32 = self.in_view.cast("I")
        self.out_view = mem.view(self.out_base, self.out_stride * depth)
        self.slots: list[Slot] = []
        # Heads 0..depth-1 when they are free: then a used id *is* the slot number.
        self.identity = self.ring.reserve(range(depth * per_chain))
        for s in range(depth):
            in_gpa = self.in_base + s * self.in_stride
            out_gpa = self.out_base + s * self.out_stride
            mem.write(in_gpa, template)
            bufs = [Buf(in_gpa, len(template)), Buf(out_gpa, self.out_len, True)]
            if indirect:
                head = self.ring.add_indirect(bufs, s if self.identity else None)
            else:
                head = self.ring.add_chain(bufs, [s, depth + s] if self.identity else None)
            self.slots.append(Slot(head, in_gpa, out_gpa))
        self.by_head = {sl.head: i for i, sl in enumerate(self.slots)}
        self.head_of = [sl.head for sl in self.slots]
        # Unique numbers are per slot: every in-flight request still has a distinct one.
        hdr = list(fa.IN_HEADER.unpack_from(template))
        for s in range(depth):
            hdr[2] = 2 * s + 2
            fa.IN_HEADER.pack_into(self.in_view, s * self.in_stride, *hdr)
        self.expect_len = expect_len
        self.min_len = min_len  # for variable replies: shorter ones are errors
        self.prepare = prepare
        self.sent_ns = [0] * depth
        self.latencies: list[int] = []
        self.completed = 0
        self.inflight = 0
        self.batch_min = max(1, depth // 4)  # completions to wait for when asleep
        self.user: dict[str, Any] = {}  # workload state

    def in_offset(self, slot: int) -> int:
        return slot * self.in_stride

    def set_u64(self, slots: Sequence[int], offset: int, values: Iterable[int]) -> None:
        """Write VALUES into the u64 at byte OFFSET of each slot's request (C-level loop)."""
        step, base, q = self.in_stride // 8, offset // 8, self.in_q
        for sl, v in zip(slots, values, strict=False):
            q[sl * step + base] = v  # memoryview item store: ~2x pack_into

    def start(self, slots: Sequence[int] | None = None) -> None:
        todo = list(range(self.depth)) if slots is None else list(slots)
        if self.prepare is not None:
            self.prepare(self, todo)
        now = time.perf_counter_ns()
        for s in todo:
            self.sent_ns[s] = now
        self.inflight += len(todo)
        self.q.submit([self.head_of[s] for s in todo])

    def harvest(self, resubmit: bool) -> int:
        """Consume every used entry, check it, and (if RESUBMIT) send the slots again."""
        ring = self.ring
        n = ring.pending_used()
        if not n:
            return 0
        start = ring.last_used & ring.mask
        words = ring.used_words
        end = start + n
        if end <= ring.size:
            heads = words[1 + 2 * start : 1 + 2 * end : 2].tolist()
            lens = [words[2 + 2 * start : 2 + 2 * end : 2]]
        else:
            wrap = end - ring.size
            heads = words[1 + 2 * start :: 2].tolist() + words[1 : 1 + 2 * wrap : 2].tolist()
            lens = [words[2 + 2 * start :: 2], words[2 : 2 + 2 * wrap : 2]]
        ring.last_used = (ring.last_used + n) & 0xFFFF
        if self.identity:
            slots = heads
            if max(heads) >= self.depth:
                raise PipelineError(f"queue {self.q.index}: used id {max(heads)} not in flight")
        else:
            by_head = self.by_head
            try:
                slots = [by_head[h] for h in heads]
            except KeyError as e:
                raise PipelineError(f"queue {self.q.index}: used id {e} not in flight") from None
        if self.expect_len is not None:
            for part in lens:
                if part != _same_u32(self.expect_len, len(part)):
                    self._explain(slots)
        else:
            for part in lens:
                if min(part.tolist()) < self.min_len:
                    self._explain(slots)
        now = time.perf_counter_ns()
        sent = self.sent_ns
        lat = self.latencies
        for sl in slots:  # a plain loop beats map() tricks with bound methods here
            lat.append(now - sent[sl])
            sent[sl] = now
        self.completed += n
        self.inflight -= n
        if resubmit:
            if self.prepare is not None:
                self.prepare(self, slots)
            self.inflight += n
            self.q.submit(heads)
        return n

    def _explain(self, slots: Sequence[int]) -> None:
        for s in slots:
            off = s * self.out_stride
            length, err, _unique = fa.OUT_HEADER.unpack_from(self.out_view, off)
            if err:
                raise fa.FuseError(-err, "pipelined request")
            if self.expect_len is not None and length != self.expect_len:
                raise PipelineError(f"reply of {length} bytes, expected {self.expect_len}")
            if length < self.min_len:
                raise PipelineError(f"reply of {length} bytes, expected >= {self.min_len}")
        raise PipelineError("used length disagrees with the expected reply length")

    def release(self) -> None:
        for sl in self.slots:
            self.ring.free_chain(sl.head)


_SAME: dict[tuple[int, int], memoryview] = {}


def cycle_take(seq: Sequence[int], start: int, n: int) -> list[int]:
    """N items of SEQ from index START on, wrapping around (slices, no Python loop)."""
    size = len(seq)
    start %= size
    if start + n <= size:
        return list(seq[start : start + n])
    out = list(seq[start:])
    n -= size - start
    while n > size:
        out += seq
        n -= size
    return out + list(seq[:n])


def _same_u32(value: int, n: int) -> memoryview:
    key = (value, n)
    mv = _SAME.get(key)
    if mv is None:
        mv = _SAME[key] = memoryview(array.array("I", [value] * n))
    return mv


@dataclass
class RunStats:
    completed: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time (includes any spinning)
    work_seconds: float = 0.0  # time spent reaping/resubmitting: the driver's own cost
    latencies_ns: list[int] = field(default_factory=list)


def run(
    fe: Frontend,
    pipes: Sequence[Pipeline],
    seconds: float,
    *,
    op_timeout: float = 5.0,
    max_ops: int | None = None,
    poll: bool = False,
) -> RunStats:
    """Keep every pipeline full for SECONDS (or MAX_OPS completions), then drain.

    POLL spins on the used rings instead of sleeping on the call eventfds (and asks the
    device not to signal): fewer syscalls on both sides, at the price of a busy core.
    """
    cpu0 = time.process_time()
    for p in pipes:
        p.start()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    last_progress = time.monotonic()
    queues = [p.q for p in pipes]
    done = 0
    work = 0.0  # wall time spent reaping and resubmitting: the driver's cost
    while True:
        got = 0
        now = time.perf_counter()
        if now >= deadline:
            break
        for p in pipes:
            # Reap whatever is there: while completions trickle in the device never has to
            # signal (used_event stays behind), which is cheaper for both sides than
            # sleeping for bigger batches; we sleep only when nothing is back.
            if p.ring.pending_used():
                got += p.harvest(resubmit=True)
                after = time.perf_counter()
                work += after - now
                now = after
        done += got
        if got:
            last_progress = time.monotonic()
            if max_ops is not None and done >= max_ops:
                break
            continue
        if poll:
            for p in pipes:
                p.ring.set_used_event(p.ring.last_used - 1)  # passed: no more signals
            if time.monotonic() - last_progress > op_timeout:
                _nap(fe, pipes, queues, last_progress, op_timeout)
        else:
            _nap(fe, pipes, queues, last_progress, op_timeout)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    in_window = sum(p.completed for p in pipes)  # the drained tail is not in the window
    drain(fe, pipes, op_timeout)
    stats = RunStats(in_window, elapsed, cpu, work)
    for p in pipes:
        stats.latencies_ns += p.latencies
    return stats


def _nap(
    fe: Frontend,
    pipes: Sequence[Pipeline],
    queues: list[Queue],
    since: float,
    op_timeout: float,
) -> None:
    # Ask for a call once batch_min are back (bigger batches), and sleep until then.
    if any(p.ring.arm(max(1, min(p.inflight, p.batch_min))) for p in pipes):
        return
    wait_any(queues, 0.01)
    if time.monotonic() - since > op_timeout:
        if not fe.alive():
            raise BackendGone("back-end closed the socket during the run")
        if all(p.ring.pending_used() == 0 for p in pipes):
            raise PipelineError(f"no completion for {op_timeout:.0f}s")


def drain(fe: Frontend, pipes: Sequence[Pipeline], op_timeout: float) -> None:
    """Collect the still-in-flight requests without sending new ones."""
    deadline = time.monotonic() + op_timeout
    while any(p.inflight for p in pipes):
        for p in pipes:
            p.harvest(resubmit=False)
        if not any(p.inflight for p in pipes):
            break
        if time.monotonic() > deadline:
            raise PipelineError("requests still in flight after the run")
        if not any(p.ring.arm(1) for p in pipes if p.inflight):
            wait_any([p.q for p in pipes], 0.01)
