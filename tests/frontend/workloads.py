"""Named benchmark workloads against any vhost-user-fs back-end.

Each workload discovers what it needs (file sizes, names, node ids) through FUSE itself,
starting from a path in the served tree, so the same run works on any back-end.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from . import fuse_abi as fa
from .client import FuseClient
from .frontend import Frontend
from .pipeline import Pipeline, cycle_take, run

WORKLOADS = ("seqread128k", "randread4k", "lookup", "getattr", "readdirplus")
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
_QQ = struct.Struct("<QQ")


@dataclass
class Result:
    workload: str
    ops: int
    seconds: float
    ops_per_s: float
    bytes: int
    mb_per_s: float
    p50_us: float
    p99_us: float
    queue_depth: int
    queues: int
    driver_cpu_us_per_op: float  # this process's CPU per request (spinning included)
    driver_work_us_per_op: float  # time the driver spent per request (reap + resubmit)

    def line(self) -> str:
        return (
            f"{self.workload}: {self.ops_per_s:,.0f} ops/s, {self.mb_per_s:,.1f} MB/s, "
            f"p50 {self.p50_us:.0f} us, p99 {self.p99_us:.0f} us, "
            f"driver {self.driver_work_us_per_op:.2f} us/op "
            f"({self.ops} ops in {self.seconds:.2f}s, depth {self.queue_depth} x "
            f"{self.queues} queue(s))"
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Node:
    parent: int
    name: bytes
    nodeid: int
    mode: int
    size: int


class Session:
    """Frontend + client + discovery, and the lookup counts to FORGET at the end."""

    def __init__(self, fe: Frontend) -> None:
        self.fe = fe
        self.fs = FuseClient(fe)
        self.fs.init()
        self.lookups: Counter[int] = Counter()
        self.after: list[Callable[[], None]] = []  # run after the pipelines stop

    def resolve(self, path: str) -> fa.EntryOut | None:
        """Walk PATH from the root with LOOKUPs; None for the root itself."""
        nodeid, entry = fa.ROOT_ID, None
        for part in [p for p in path.encode().split(b"/") if p]:
            entry = self.fs.lookup(nodeid, part)
            self.lookups[entry.nodeid] += 1
            nodeid = entry.nodeid
        return entry

    def walk(self, top: int, limit: int) -> list[Node]:
        """Breadth-first READDIRPLUS listing of up to LIMIT entries under node TOP."""
        out: list[Node] = []
        todo = [top]
        while todo and len(out) < limit:
            parent = todo.pop(0)
            for d in self.fs.listdir(parent, plus=True):
                if d.name in (b".", b"..") or d.entry is None or not d.entry.nodeid:
                    continue
                self.lookups[d.entry.nodeid] += 1
                a = d.entry.attr
                out.append(Node(parent, d.name, d.entry.nodeid, a.mode, a.size))
                if (a.mode & 0o170000) == 0o040000:
                    todo.append(d.entry.nodeid)
        return out[:limit]

    def forget_all(self) -> None:
        items = [(n, c) for n, c in self.lookups.items() if n != fa.ROOT_ID]
        for i in range(0, len(items), 256):
            self.fs.batch_forget(items[i : i + 256])
        self.lookups.clear()


def _pick_file(sess: Session, path: str, min_size: int) -> tuple[int, int]:
    """(nodeid, size) of PATH, or of the biggest regular file under the directory PATH."""
    entry = sess.resolve(path)
    if entry is not None and (entry.attr.mode & 0o170000) == 0o100000:
        node, size = entry.nodeid, entry.attr.size
    else:
        top = fa.ROOT_ID if entry is None else entry.nodeid
        files = [n for n in sess.walk(top, 10000) if (n.mode & 0o170000) == 0o100000]
        if not files:
            raise ValueError(f"no regular file under {path}")
        best = max(files, key=lambda n: n.size)
        node, size = best.nodeid, best.size
    if size < min_size:
        raise ValueError(f"{path}: biggest file is {size} bytes, need at least {min_size}")
    return node, size


def _read_pipes(
    sess: Session, path: str, io: int, depth: int, queues: int, seq: bool, indirect: bool
) -> list[Pipeline]:
    node, size = _pick_file(sess, path, io)
    fh = sess.fs.open(node).fh
    nblocks = size // io
    state = {"next": 0}
    rnd = random.Random(1234)
    if seq:
        offsets = [i * io for i in range(nblocks)]
    else:
        offsets = [rnd.randrange(nblocks) * io for _ in range(1 << 16)]

    def prepare(p: Pipeline, slots: Sequence[int]) -> None:
        k = state["next"]
        p.set_u64(slots, 48, cycle_take(offsets, k, len(slots)))  # read_in.offset
        state["next"] = k + len(slots)

    tmpl = fa.request(fa.Op.READ, 0, node, fa.read_in(fh, 0, io))
    return [
        Pipeline(
            sess.fe, q, depth, tmpl, io, expect_len=16 + io, prepare=prepare, indirect=indirect
        )
        for q in range(1, queues + 1)
    ]


def _tree(sess: Session, path: str, limit: int = 20000) -> list[Node]:
    entry = sess.resolve(path)
    nodes = sess.walk(fa.ROOT_ID if entry is None else entry.nodeid, limit)
    if not nodes:
        raise ValueError(f"nothing under {path}")
    return nodes


def _getattr_pipes(
    sess: Session, path: str, depth: int, queues: int, indirect: bool
) -> list[Pipeline]:
    ids = [n.nodeid for n in _tree(sess, path)]
    state = {"next": 0}

    def prepare(p: Pipeline, slots: Sequence[int]) -> None:
        k = state["next"]
        p.set_u64(slots, 16, cycle_take(ids, k, len(slots)))  # in_header.nodeid
        state["next"] = k + len(slots)

    tmpl = fa.request(fa.Op.GETATTR, 0, ids[0], fa.getattr_in())
    return [
        Pipeline(
            sess.fe, q, depth, tmpl, 104, expect_len=16 + 104, prepare=prepare, indirect=indirect
        )
        for q in range(1, queues + 1)
    ]


def _lookup_pipes(
    sess: Session, path: str, depth: int, queues: int, indirect: bool
) -> list[Pipeline]:
    nodes = _tree(sess, path)
    names = [n.name + b"\0" for n in nodes]
    totals = [fa.IN_HEADER.size + len(nm) for nm in names]
    parents = [n.parent for n in nodes]
    order = list(range(len(nodes)))
    state = {"next": 0}
    if indirect:
        raise ValueError("lookup rewrites descriptor lengths: run it without --indirect")

    def prepare(p: Pipeline, slots: Sequence[int]) -> None:
        k = state["next"]
        view, stride, u32, u64 = p.in_view, p.in_stride, p.in_u32, p.in_q
        st4, st8 = stride // 4, stride // 8
        desc, heads = p.ring.desc_u32, p.head_of
        for s, i in zip(slots, cycle_take(order, k, len(slots)), strict=True):
            total = totals[i]
            u32[s * st4] = total  # in_header.len
            u64[s * st8 + 2] = parents[i]  # in_header.nodeid
            base = s * stride + 40
            view[base : base + total - 40] = names[i]
            desc[4 * heads[s] + 2] = total  # the readable descriptor's len
        state["next"] = k + len(slots)

    def forget_counts() -> None:
        # Name i went out k // n times, once more if it is among the first k % n.
        k, n = state["next"], len(nodes)
        for i, node in enumerate(nodes):
            sess.lookups[node.nodeid] += k // n + (i < k % n)

    sess.after.append(forget_counts)
    tmpl = fa.request(fa.Op.LOOKUP, 0, fa.ROOT_ID, fa.lookup_in(b"x"))
    return [
        Pipeline(
            sess.fe, q, depth, tmpl, 128, in_room=40 + 256, expect_len=16 + 128, prepare=prepare
        )
        for q in range(1, queues + 1)
    ]


def _readdirplus_pipes(
    sess: Session, path: str, io: int, depth: int, queues: int, indirect: bool
) -> list[Pipeline]:
    entry = sess.resolve(path)
    node = fa.ROOT_ID if entry is None else entry.nodeid
    fh = sess.fs.opendir(node).fh
    pages: list[tuple[int, list[int]]] = []  # (offset, node ids the page returns)
    off = 0
    while True:
        batch = sess.fs.readdirplus(node, fh, off, io)
        if not batch:
            break
        ids = [d.entry.nodeid for d in batch if d.entry is not None and d.entry.nodeid]
        for i in ids:
            sess.lookups[i] += 1
        pages.append((off, ids))
        off = batch[-1].off
    sess.fs.releasedir(node, fh)
    counts = [0] * len(pages)
    pack = _QQ.pack_into

    # Like many concurrent `ls -l`: each slot has its own handle and reads it page by page.
    def prepare(p: Pipeline, slots: Sequence[int]) -> None:
        view, stride, n = p.in_view, p.in_stride, len(pages)
        fhs, at = p.user["fhs"], p.user["page"]
        for s in slots:
            i = at[s]
            pack(view, s * stride + 40, fhs[s], pages[i][0])
            counts[i] += 1
            at[s] = i + 1 if i + 1 < n else 0

    def forget_counts() -> None:
        for i, c in enumerate(counts):
            for nid in pages[i][1]:
                sess.lookups[nid] += c

    tmpl = fa.request(fa.Op.READDIRPLUS, 0, node, fa.read_in(0, 0, io))
    pipes = []
    for q in range(1, queues + 1):
        # Every page holds entries: a bare out_header (an error or an empty page) is wrong.
        p = Pipeline(sess.fe, q, depth, tmpl, io, min_len=17, prepare=prepare, indirect=indirect)
        p.user["fhs"] = [sess.fs.opendir(node).fh for _ in range(depth)]
        p.user["page"] = [s % len(pages) for s in range(depth)]  # staggered starts
        pipes.append(p)

    def release() -> None:
        for p in pipes:
            for h in p.user["fhs"]:
                sess.fs.releasedir(node, h)

    sess.after += [forget_counts, release]
    return pipes


def run_workload(
    socket: str,
    name: str,
    *,
    path: str = "/",
    queue_depth: int = 64,
    seconds: float = 5.0,
    warmup: float = 0.5,
    queues: int = 1,
    queue_size: int = 1024,
    io_size: int | None = None,
    event_idx: bool = True,
    indirect: bool = False,
    connect_timeout: float = 10.0,
    poll: bool = False,
) -> Result:
    """Connect to SOCKET as a fresh front-end, run workload NAME, disconnect cleanly."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r} (one of {', '.join(WORKLOADS)})")
    io = io_size or {"seqread128k": 128 << 10, "randread4k": 4096, "readdirplus": 4096}.get(name, 0)
    per_slot = io + 4096
    mem_size = max(64 << 20, (queue_depth * queues * per_slot * 2 + (48 << 20)) & ~0xFFFFF)
    fe = Frontend(
        socket,
        mem_size=mem_size,
        request_queues=queues,
        queue_size=queue_size,
        event_idx=event_idx,
        indirect=indirect,
        connect_timeout=connect_timeout,
    )
    fe.start()
    try:
        sess = Session(fe)
        nq = fe.request_queues
        depth = min(queue_depth, queue_size // 2 - 8)
        builders: dict[str, Callable[[], list[Pipeline]]] = {
            "seqread128k": lambda: _read_pipes(sess, path, io, depth, nq, True, indirect),
            "randread4k": lambda: _read_pipes(sess, path, io, depth, nq, False, indirect),
            "getattr": lambda: _getattr_pipes(sess, path, depth, nq, indirect),
            "lookup": lambda: _lookup_pipes(sess, path, depth, nq, indirect),
            "readdirplus": lambda: _readdirplus_pipes(sess, path, io, depth, nq, indirect),
        }
        pipes = builders[name]()
        if warmup > 0:
            run(fe, pipes, warmup, poll=poll)
            for p in pipes:
                p.latencies.clear()
                p.completed = 0
        stats = run(fe, pipes, seconds, poll=poll)
        for p in pipes:
            p.release()
        for hook in sess.after:
            hook()
        sess.forget_all()
        fe.stop()
    finally:
        fe.close()
    lat = sorted(stats.latencies_ns)
    ops = stats.completed
    nbytes = ops * io if name in ("seqread128k", "randread4k") else 0
    return Result(
        workload=name,
        ops=ops,
        seconds=stats.seconds,
        ops_per_s=ops / stats.seconds if stats.seconds else 0.0,
        bytes=nbytes,
        mb_per_s=nbytes / stats.seconds / 1e6 if stats.seconds else 0.0,
        p50_us=lat[len(lat) // 2] / 1000 if lat else 0.0,
        p99_us=lat[min(len(lat) - 1, len(lat) * 99 // 100)] / 1000 if lat else 0.0,
        queue_depth=depth,
        queues=nq,
        driver_cpu_us_per_op=stats.cpu_seconds / ops * 1e6 if ops else 0.0,
        driver_work_us_per_op=stats.work_seconds / ops * 1e6 if ops else 0.0,
    )
