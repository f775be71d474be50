"""A synchronous FUSE client over one Frontend, like the guest kernel's virtio-fs driver.

`submit` + `wait` keep many requests in flight; the named methods are one request each and
raise FuseError (with .errno) on an error reply.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from . import fuse_abi as fa
from .conn import BackendGone
from .frontend import Frontend, Queue, wait_any
from .memory import GuestMemory
from .vring import Buf

SMALL_OUT = 4096


class NoReply(TimeoutError):
    """The back-end did not complete a request in time (it is still connected)."""


class BufferPool:
    """Power-of-two buffers in guest memory, recycled through per-size free lists."""

    def __init__(self, mem: GuestMemory) -> None:
        self.mem = mem
        self.free: dict[int, list[int]] = {}

    def get(self, size: int) -> tuple[int, int]:
        cls = max(256, 1 << (max(size, 1) - 1).bit_length())
        lst = self.free.setdefault(cls, [])
        return (lst.pop() if lst else self.mem.alloc(cls, 64)), cls

    def put(self, gpa: int, cls: int) -> None:
        self.free[cls].append(gpa)


@dataclass
class Pending:
    unique: int
    opcode: int
    queue: int
    head: int
    in_buf: tuple[int, int]
    out_buf: tuple[int, int] | None
    sent_ns: int


@dataclass
class Reply:
    unique: int
    opcode: int
    data: bytes  # what the device wrote (out_header + payload); b"" for FORGETs
    latency_ns: int

    def payload(self) -> memoryview:
        """Checked payload; raises FuseError on an error reply."""
        return fa.check_reply(self.data, self.unique, self.opcode)


class FuseClient:
    def __init__(
        self,
        fe: Frontend,
        queue: int = 1,
        *,
        indirect: bool = False,
        max_seg: int = 0,
        timeout: float = 5.0,
        uid: int = 0,
        gid: int = 0,
    ) -> None:
        self.fe = fe
        self.queue = queue
        self.indirect = indirect and fe.indirect
        self.max_seg = max_seg  # split buffers into descriptors of at most this many bytes
        self.timeout = timeout
        self.ids = {"uid": uid, "gid": gid, "pid": os.getpid()}
        self.pool = BufferPool(fe.mem)
        self.next_unique = 2
        self.pending: dict[tuple[int, int], Pending] = {}  # (queue, head) -> request
        self.unpublished: dict[int, list[int]] = {}
        self.done: dict[int, Reply] = {}
        self.init_reply: fa.InitOut | None = None
        self.stray: list[tuple[int, int, int]] = []  # (queue, id, len) not ours (fuzzing)

    # ------------------------------------------------------------ transport

    def _segments(self, gpa: int, length: int, writable: bool) -> list[Buf]:
        if not self.max_seg or length <= self.max_seg:
            return [Buf(gpa, length, writable)]
        return [
            Buf(gpa + o, min(self.max_seg, length - o), writable)
            for o in range(0, length, self.max_seg)
        ]

    def submit(
        self,
        opcode: int,
        nodeid: int,
        args: bytes = b"",
        out_size: int = SMALL_OUT,
        *,
        queue: int | None = None,
        unique: int | None = None,
    ) -> int:
        """Queue one request (published by the next flush/wait); return its unique."""
        q = self.queue if queue is None else queue
        if unique is None:
            unique = self.next_unique
            self.next_unique += 2
        req = fa.request(opcode, unique, nodeid, args, **self.ids)
        in_buf = self.pool.get(len(req))
        self.fe.mem.write(in_buf[0], req)
        bufs = self._segments(in_buf[0], len(req), False)
        out_buf = None
        if out_size:
            out_buf = self.pool.get(fa.OUT_HEADER.size + out_size)
            bufs += self._segments(out_buf[0], fa.OUT_HEADER.size + out_size, True)
        ring = self.fe.queues[q].ring
        head = ring.add_indirect(bufs) if self.indirect else ring.add_chain(bufs)
        self.pending[(q, head)] = Pending(
            unique, opcode, q, head, in_buf, out_buf, time.perf_counter_ns()
        )
        self.unpublished.setdefault(q, []).append(head)
        return unique

    def flush(self) -> None:
        for q, heads in self.unpublished.items():
            if heads:
                self.fe.queues[q].submit(heads)
        self.unpublished.clear()

    def _reap(self, q: Queue) -> int:
        now = time.perf_counter_ns()
        got = 0
        for head, length in q.ring.pop_used():
            p = self.pending.pop((q.index, head), None)
            if p is None:
                self.stray.append((q.index, head, length))
                continue
            data = b""
            if p.out_buf is not None:
                if length > p.out_buf[1]:
                    raise fa.ReplyFormatError(f"used len {length} > buffer {p.out_buf[1]}")
                data = self.fe.mem.read(p.out_buf[0], length)
                self.pool.put(*p.out_buf)
            elif length:
                raise fa.ReplyFormatError(f"used len {length} for a request with no reply")
            self.pool.put(*p.in_buf)
            q.ring.free_chain(head)
            self.done[p.unique] = Reply(p.unique, p.opcode, data, now - p.sent_ns)
            got += 1
        return got

    def wait(self, uniques: Iterable[int], timeout: float | None = None) -> list[Reply]:
        """Publish what is queued, then wait for every one of UNIQUES; replies in that order."""
        want = list(uniques)
        self.flush()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        queues = {p.queue for p in self.pending.values()} or {self.queue}
        while any(u not in self.done for u in want):
            for qi in queues:
                self._reap(self.fe.queues[qi])
            if all(u in self.done for u in want):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                if not self.fe.alive():
                    raise BackendGone("back-end closed the socket with requests in flight")
                missing = sum(u not in self.done for u in want)
                raise NoReply(f"{missing} of {len(want)} requests unanswered")
            if not any(self.fe.queues[qi].ring.arm(1) for qi in queues):
                signalled = wait_any([self.fe.queues[qi] for qi in queues], min(left, 0.05))
                if not signalled and not self.fe.alive():  # a dead back-end: fail fast
                    raise BackendGone("back-end closed the socket with requests in flight")
        return [self.done.pop(u) for u in want]

    def call(
        self,
        opcode: int,
        nodeid: int,
        args: bytes = b"",
        out_size: int = SMALL_OUT,
        *,
        queue: int | None = None,
    ) -> memoryview:
        u = self.submit(opcode, nodeid, args, out_size, queue=queue)
        return self.wait([u])[0].payload()

    # ------------------------------------------------------------ operations

    def init(
        self, flags: int = fa.KERNEL_INIT_FLAGS, flags2: int = 0, minor: int = fa.KERNEL_MINOR
    ) -> fa.InitOut:
        self.init_reply = fa.init_out(
            self.call(fa.Op.INIT, 0, fa.init_in(flags, flags2, minor=minor), 64)
        )
        return self.init_reply

    def lookup(self, parent: int, name: bytes) -> fa.EntryOut:
        return fa.entry_out(self.call(fa.Op.LOOKUP, parent, fa.lookup_in(name), 128))

    def forget(self, nodeid: int, nlookup: int) -> None:
        u = self.submit(fa.Op.FORGET, nodeid, fa.forget_in(nlookup), 0, queue=0)
        self.wait([u])

    def batch_forget(self, items: Iterable[tuple[int, int]]) -> None:
        u = self.submit(fa.Op.BATCH_FORGET, 0, fa.batch_forget_in(items), 0, queue=0)
        self.wait([u])

    def getattr(self, nodeid: int, fh: int | None = None) -> fa.AttrOut:
        return fa.attr_out(self.call(fa.Op.GETATTR, nodeid, fa.getattr_in(fh), 104))

    def readlink(self, nodeid: int) -> bytes:
        return bytes(self.call(fa.Op.READLINK, nodeid, b"", 4096))

    def open(self, nodeid: int, flags: int = os.O_RDONLY) -> fa.OpenOut:
        return fa.open_out(self.call(fa.Op.OPEN, nodeid, fa.open_in(flags), 16))

    def read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        return bytes(self.call(fa.Op.READ, nodeid, fa.read_in(fh, offset, size), size))

    def release(self, nodeid: int, fh: int) -> None:
        self.call(fa.Op.RELEASE, nodeid, fa.release_in(fh), 16)

    def flush_fh(self, nodeid: int, fh: int) -> None:
        self.call(fa.Op.FLUSH, nodeid, fa.flush_in(fh), 16)

    def opendir(self, nodeid: int) -> fa.OpenOut:
        return fa.open_out(self.call(fa.Op.OPENDIR, nodeid, fa.open_in(os.O_RDONLY), 16))

    def readdir(self, nodeid: int, fh: int, offset: int = 0, size: int = 4096) -> list[fa.Dirent]:
        data = self.call(fa.Op.READDIR, nodeid, fa.read_in(fh, offset, size), size)
        return fa.dirents(data, plus=False)

    def readdirplus(
        self, nodeid: int, fh: int, offset: int = 0, size: int = 4096
    ) -> list[fa.Dirent]:
        data = self.call(fa.Op.READDIRPLUS, nodeid, fa.read_in(fh, offset, size), size)
        return fa.dirents(data, plus=True)

    def listdir(self, nodeid: int, plus: bool = True, size: int = 65536) -> list[fa.Dirent]:
        """OPENDIR, READDIR(PLUS) until an empty reply, RELEASEDIR."""
        fh = self.opendir(nodeid).fh
        out: list[fa.Dirent] = []
        off = 0
        try:
            while True:
                batch = (self.readdirplus if plus else self.readdir)(nodeid, fh, off, size)
                if not batch:
                    return out
                out += batch
                off = batch[-1].off
        finally:
            self.releasedir(nodeid, fh)

    def releasedir(self, nodeid: int, fh: int) -> None:
        self.call(fa.Op.RELEASEDIR, nodeid, fa.release_in(fh), 16)

    def statfs(self, nodeid: int = fa.ROOT_ID) -> fa.StatfsOut:
        return fa.statfs_out(self.call(fa.Op.STATFS, nodeid, b"", 80))

    def getxattr(self, nodeid: int, name: bytes, size: int = 65536) -> bytes:
        data = self.call(fa.Op.GETXATTR, nodeid, fa.getxattr_in(name, size), size)
        return bytes(data)

    def getxattr_size(self, nodeid: int, name: bytes) -> int:
        """GETXATTR with size 0: the server answers the value's length."""
        return fa.u32_first(self.call(fa.Op.GETXATTR, nodeid, fa.getxattr_in(name, 0), 8))

    def listxattr(self, nodeid: int, size: int = 65536) -> list[bytes]:
        return fa.xattr_names(self.call(fa.Op.LISTXATTR, nodeid, fa.listxattr_in(size), size))

    def listxattr_size(self, nodeid: int) -> int:
        return fa.u32_first(self.call(fa.Op.LISTXATTR, nodeid, fa.listxattr_in(0), 8))

    def access(self, nodeid: int, mask: int) -> None:
        self.call(fa.Op.ACCESS, nodeid, fa.access_in(mask), 16)

    def lseek(self, nodeid: int, fh: int, offset: int, whence: int) -> int:
        return fa.lseek_out(self.call(fa.Op.LSEEK, nodeid, fa.lseek_in(fh, offset, whence), 8))

    # Mutations: a read-only server must refuse each with EROFS.
    def mkdir(self, parent: int, name: bytes, mode: int = 0o755) -> fa.EntryOut:
        return fa.entry_out(self.call(fa.Op.MKDIR, parent, fa.mkdir_in(name, mode), 128))

    def unlink(self, parent: int, name: bytes) -> None:
        self.call(fa.Op.UNLINK, parent, fa.lookup_in(name), 16)

    def write(self, nodeid: int, fh: int, offset: int, data: bytes) -> int:
        return fa.u32_first(self.call(fa.Op.WRITE, nodeid, fa.write_in(fh, offset, data), 8))

    def setattr(
        self, nodeid: int, *, size: int | None = None, mode: int | None = None
    ) -> fa.AttrOut:
        return fa.attr_out(
            self.call(fa.Op.SETATTR, nodeid, fa.setattr_in(size=size, mode=mode), 104)
        )

    def create(
        self, parent: int, name: bytes, flags: int = os.O_WRONLY | os.O_CREAT, mode: int = 0o644
    ) -> tuple[fa.EntryOut, fa.OpenOut]:
        data = self.call(fa.Op.CREATE, parent, fa.create_in(name, flags, mode), 144)
        return fa.entry_out(data), fa.open_out(data[128:])
