"""A real image, a real chunk store and cache, a FUSE server, and a split ring in memfd
guest memory: requests go in as descriptor chains, the C fast path drains them, and every
reply (C's or, for left-overs, the Python server's) comes back out of guest memory.

A second Server over its own ImageFS (same bootstrap and store) is the reference: the
reply the C path wrote must be byte-identical to the reference's for the same request.
"""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuse import wire
from tests.fuse.images import CS, Dev, File, Link, Tree
from tests.vhost.driver import NEXT, WRITE, Driver, Layout, make_memory
from virtiofsd_nydus.format.reader import Bootstrap
from virtiofsd_nydus.fuse import abi
from virtiofsd_nydus.fuse.fastpath import FastPath
from virtiofsd_nydus.fuse.filesystem import CachePolicy
from virtiofsd_nydus.fuse.imagefs import ImageFS
from virtiofsd_nydus.fuse.server import Server
from virtiofsd_nydus.storage import CacheDir, ChunkStore, LocalFsBackend
from virtiofsd_nydus.vhost.device import VirtioDevice
from virtiofsd_nydus.vhost.vring import Virtqueue

MIB = 1 << 20
RING = 1024
DATA_START = 0x10000
REGION = 16 * MIB  # two adjacent regions: buffers crossing 16 MiB become two iovecs
LAYOUT = Layout(regions=((0, REGION, 0), (REGION, REGION, REGION)))


def tree(seed: int = 7) -> Tree:
    """Files at every size edge, holes, long names sharing 8-byte prefixes, odd nodes."""
    rnd = random.Random(seed)

    def data(n: int) -> bytes:
        return rnd.randbytes(n)

    holey = bytearray(data(6 * CS + 100))
    for c in (1, 2, 5):
        holey[c * CS : (c + 1) * CS] = bytes(CS)
    tail_hole = bytearray(data(3 * CS))
    tail_hole[2 * CS :] = bytes(CS)
    names: dict[bytes, File | Link | Dev | Tree] = {
        b"abcdefgh": File(data(10)),
        b"abcdefgh1": File(data(CS + 1)),
        b"abcdefgh2": File(data(1)),
        b"abcdefghij": File(b""),
        b"abcdefg": File(data(CS - 1)),
        b"a": File(data(CS)),
    }
    big = {f"entry-{i:04d}-with-a-long-name".encode(): File(data(i % 3)) for i in range(300)}
    return {
        **names,
        b"empty": File(b""),
        b"one": File(b"x"),
        b"page": File(data(CS)),
        b"page1": File(data(CS + 1)),
        b"odd": File(data(3 * CS + 5)),
        b"forty": File(data(40 * CS + 123)),
        b"big": File(data(300 * CS + 77)),  # > 1 MiB
        b"holey": File(bytes(holey), holes=frozenset({1, 2, 5})),
        b"tailhole": File(bytes(tail_hole), holes=frozenset({2})),
        b"cold": File(data(5 * CS + 9)),  # never cached by the rig: reads fall back
        b"link": Link(b"forty"),
        b"chr": Dev(stat.S_IFCHR | 0o600, os.makedev(300, 70000)),
        b"fifo": Dev(stat.S_IFIFO | 0o600, 0),
        b"dir": {b"nested": {b"deep": File(data(2 * CS))}, **big},
        b"emptydir": {},
    }


@dataclass
class Result:
    served: bool  # by C (else by the Python server, as a left-over)
    reply: bytes  # the reply bytes the guest sees (used length of them)
    expected: bytes | None  # the reference server's reply for the same request


@dataclass
class Req:
    data: bytes
    write: Sequence[int] = 4096  # writable descriptor sizes
    read_split: Sequence[int] = ()  # readable descriptor sizes (rest in the last one)
    ref: bool = True  # also ask the reference server
    extra: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.write, int):
            self.write = (self.write,)


class Rig:
    def __init__(
        self,
        bs: Bootstrap,
        blob_dir: Path,
        cache_dir: Path | CacheDir,
        *,
        policy: CachePolicy = CachePolicy.ALWAYS,
        warm: bool = True,
        init: bool = True,
    ) -> None:
        self.bs = bs
        self.store = ChunkStore.from_bootstrap(bs, [LocalFsBackend(blob_dir)], cache_dir)
        self.fs = ImageFS(bs, self.store, policy=policy)
        self.server = Server(self.fs)
        self.fp = FastPath(self.server, self.fs, self.store)
        self.ref_fs = ImageFS(bs, self.store, policy=policy)
        self.ref = Server(self.ref_fs)
        if warm:
            self.warm(exclude=(b"/cold",))
        if init:
            self.init()
        self.mem, self._memfd = make_memory(LAYOUT)
        self.drv = Driver(self.mem, RING)
        self.q = Virtqueue(1, self.mem, batch_size=64)
        self.q.start(RING, 0, self.drv.desc, self.drv.avail, self.drv.used, False)
        self.q.fast_drain = self.fp
        self.device: VirtioDevice | None = None  # answers left-overs if set (else the rig)

    def warm(self, exclude: Sequence[bytes] = ()) -> None:
        """Fetch and verify every chunk of every file except those under ``exclude``."""
        skip = {self.bs.resolve(p) for p in exclude}
        wanted: list[int] = []
        for _, ino in self.bs.walk():
            if ino in skip or not self.bs.inode(ino).is_reg:
                continue
            wanted.extend(c for _, c in self.bs.file_chunks(ino))
        if wanted:
            self.store.ensure_range(wanted)

    def init(self) -> None:
        body = wire.init_body(flags=wire.KERNEL_FLAGS, flags2=wire.KERNEL_FLAGS2)
        for s in (self.server, self.ref):
            s.handle(wire.request(abi.Opcode.INIT, body), wire.BIG)
        self.fp.sync_session()

    def close(self) -> None:
        self.fp.close()
        self.store.close()
        self.mem.close()
        os.close(self._memfd)

    # ---- running requests through the ring ---------------------------------------------------
    def run(self, reqs: Sequence[Req]) -> list[Result]:
        out: list[Result] = []
        batch: list[Req] = []
        used = descs = 0
        for r in reqs:
            need = sum(r.write) + len(r.data) + 64 * 8  # type: ignore[arg-type]
            nd = len(r.read_split) + 1 + len(r.write)  # type: ignore[arg-type]
            if batch and (descs + nd > RING or used + need > 2 * REGION - DATA_START - MIB):
                out.extend(self._batch(batch))
                batch, used, descs = [], 0, 0
            batch.append(r)
            used += need
            descs += nd
        if batch:
            out.extend(self._batch(batch))
        return out

    def _batch(self, reqs: Sequence[Req]) -> list[Result]:
        drv = self.drv
        gpa = DATA_START
        desc = 0
        heads: dict[int, tuple[int, list[tuple[int, int]]]] = {}
        for n, r in enumerate(reqs):
            pieces: list[tuple[int, int, int]] = []  # addr, len, flags
            rest = r.data
            for size in r.read_split:
                part, rest = rest[:size], rest[size:]
                pieces.append((gpa, len(part), 0))
                self._put(gpa, part)
                gpa += len(part) + 8
            pieces.append((gpa, len(rest), 0))
            self._put(gpa, rest)
            gpa += len(rest) + 8
            wbufs: list[tuple[int, int]] = []
            for size in r.write:  # type: ignore[union-attr]
                pieces.append((gpa, size, WRITE))
                self._put(gpa, b"\xaa" * size)  # to see that nothing past the reply is written
                wbufs.append((gpa, size))
                gpa += size + 8
            head = desc
            for i, (addr, length, flags) in enumerate(pieces):
                last = i == len(pieces) - 1
                drv.set_desc(desc, addr, length, flags | (0 if last else NEXT), desc + 1)
                desc += 1
            assert desc <= RING, "batch too large for the ring"
            heads[head] = (n, wbufs)
            drv.publish(head)
        results: list[Result | None] = [None] * len(reqs)
        seen = drv.used_seen
        py_heads: set[int] = set()
        left = self.q.pop()
        while True:
            py_heads.update(chain.head for chain in left)
            if self.device is not None:
                self.device.handle(self.q, left)
            for chain in left if self.device is None else ():
                reply = self.server.handle(chain.read(), chain.write_len)
                self.fp.sync_session()
                self.q.complete(chain, chain.write(reply) if reply is not None else 0)
            if not left:
                break
            left = self.q.pop()
        assert self.q.outstanding == 0 and self.q.inflight == 0
        end = drv.used_idx()
        for i in range(seen, end):
            head, length = drv.used_elem(i)
            n, wbufs = heads.pop(head)
            data = b"".join(self._get(a, s) for a, s in wbufs)
            reply, tail = data[:length], data[length:]
            assert tail == b"\xaa" * len(tail), "bytes written past the reply"
            r = reqs[n]
            expected = None
            if r.ref:
                expected = self.ref.handle(r.data, sum(r.write)) or b""  # type: ignore[arg-type]
            results[n] = Result(head not in py_heads, reply, expected)
        drv.used_seen = end
        assert not heads, f"chains never completed: {sorted(heads)}"
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _get(self, gpa: int, size: int) -> bytes:
        parts = []
        while size:
            n = min(size, REGION - gpa % REGION)
            parts.append(bytes(self.mem.view(gpa, n)))
            gpa += n
            size -= n
        return b"".join(parts)

    def _put(self, gpa: int, data: bytes) -> None:
        """Write into guest memory, across the region edge if need be."""
        while data:
            room = REGION - gpa % REGION
            part = data[:room]
            self.mem.view(gpa, len(part))[:] = part
            data = data[len(part) :]
            gpa += len(part)
