"""Malformed input for a back-end, and what became of it: replied, refused, ignored, died.

Every wait has a deadline, so a back-end that hangs makes a NO_REPLY, never a stuck test.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from . import fuse_abi as fa
from .client import FuseClient, NoReply
from .conn import BackendGone, ReplyTimeout
from .frontend import Frontend
from .vring import DESC


class Outcome(enum.Enum):
    REPLIED = "replied"  # used entry with a success reply
    ERROR = "error"  # used entry with an error reply (errno set)
    CONSUMED = "consumed"  # used entry without a readable reply (len < 16): dropped
    NO_REPLY = "no reply"  # still connected, nothing came back in time
    DIED = "died"  # the back-end hung up


@dataclass
class Observation:
    outcome: Outcome
    used_len: int | None = None
    errno: int | None = None
    queue_ok: bool | None = None  # did a valid request on the same queue work afterwards?


@dataclass
class RawMessageResult:
    replied: bool
    request: int = 0
    flags: int = 0
    payload: bytes = b""
    alive: bool = True


class RawQueue:
    """Hand-written descriptors on one queue of a started Frontend."""

    def __init__(self, fe: Frontend, queue: int = 1) -> None:
        self.fe = fe
        self.q = fe.queues[queue]
        self.ring = self.q.ring

    def descs(self, n: int) -> list[int]:
        return self.ring.take(n)

    def buffer(self, data: bytes | int, align: int = 64) -> int:
        """Guest memory holding DATA (or N zero bytes); returns its guest-physical address."""
        size = data if isinstance(data, int) else len(data)
        gpa = self.fe.mem.alloc(max(size, 1), align)
        if not isinstance(data, int):
            self.fe.mem.write(gpa, data)
        return gpa

    def set(self, i: int, addr: int, length: int, flags: int = 0, next_: int = 0) -> None:
        self.ring.set_desc(i, addr, length, flags, next_)

    def table(self, descs: Sequence[tuple[int, int, int, int]]) -> int:
        """An indirect table in guest memory; returns its address."""
        gpa = self.buffer(16 * len(descs), 16)
        self.fe.mem.write(gpa, b"".join(DESC.pack(*d) for d in descs))
        return gpa

    def submit(self, head: int) -> None:
        self.q.submit([head])
        self.q.kick()  # always: a back-end that suppressed kicks must still look at it

    def observe(self, head: int, out_gpa: int | None = None, timeout: float = 2.0) -> Observation:
        """Wait for HEAD to come back and classify what the back-end did with it."""
        deadline = time.monotonic() + timeout
        while not self.q.wait_used(1, min(0.05, max(0.0, deadline - time.monotonic()))):
            if not self.fe.alive():
                return Observation(Outcome.DIED)
            if time.monotonic() >= deadline:
                return Observation(Outcome.NO_REPLY)
        for used_id, length in self.ring.pop_used():
            if used_id != head:
                continue
            if out_gpa is None or length < fa.OUT_HEADER.size:
                return Observation(Outcome.CONSUMED, length)
            hdr = fa.out_header(self.fe.mem.read(out_gpa, fa.OUT_HEADER.size))
            if hdr.error:
                return Observation(Outcome.ERROR, length, -hdr.error)
            return Observation(Outcome.REPLIED, length)
        return Observation(Outcome.NO_REPLY)

    def probe(self, client: FuseClient, timeout: float = 2.0) -> bool:
        """A plain GETATTR of the root on this queue: is the queue still served?"""
        try:
            u = client.submit(fa.Op.GETATTR, fa.ROOT_ID, fa.getattr_in(), 104, queue=self.q.index)
            client.wait([u], timeout)[0].payload()
            return True
        except (NoReply, BackendGone, OSError, fa.ReplyFormatError):
            return False


def raw_message(
    fe: Frontend,
    request: int,
    payload: bytes = b"",
    fds: Sequence[int] = (),
    flags: int = 0x1,
    timeout: float = 1.0,
) -> RawMessageResult:
    """Send any vhost-user message; report the reply (if any) and whether the peer lives."""
    try:
        fe.raw_send(request, payload, fds, flags)
        req, rflags, body, rfds = fe.c.recv_message(timeout)
    except ReplyTimeout:
        return RawMessageResult(False, alive=fe.alive())
    except BackendGone:
        return RawMessageResult(False, alive=False)
    for fd in rfds:
        os.close(fd)
    return RawMessageResult(True, req, rflags, body, fe.alive())
