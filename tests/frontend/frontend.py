"""The QEMU side of vhost-user-fs: negotiate, share memory, set up, stop and restart rings."""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import vhost_msg as vm
from .conn import BackendGone, Connection, connect
from .memory import GuestMemory, GuestRegion
from .vring import SplitRing


class VhostNack(Exception):
    """The back-end answered a REPLY_ACK request with a non-zero status."""

    def __init__(self, request: int, status: int) -> None:
        super().__init__(f"{_name(request)} refused with status {status}")
        self.request = request
        self.status = status


def _name(request: int) -> str:
    return vm.Req(request).name if request in vm.Req._value2member_map_ else f"request {request}"


@dataclass
class Queue:
    index: int
    ring: SplitRing
    kick_fd: int = field(default_factory=lambda: os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
    call_fd: int = field(default_factory=lambda: os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
    enabled: bool = False

    def __post_init__(self) -> None:
        self._poll = select.poll()
        self._poll.register(self.call_fd, select.POLLIN)

    def set_call_fd(self, fd: int) -> None:
        self._poll.unregister(self.call_fd)
        os.close(self.call_fd)
        self.call_fd = fd
        self._poll.register(fd, select.POLLIN)

    def kick(self) -> None:
        os.eventfd_write(self.kick_fd, 1)

    def submit(self, heads: Sequence[int]) -> None:
        """Publish HEADS and kick if the device asked for it."""
        old, new = self.ring.put_avail(heads)
        if self.ring.kick_needed(old, new):
            self.kick()

    def wait_call(self, timeout: float) -> bool:
        """Block until the device signals the call eventfd (consumed) or TIMEOUT seconds."""
        if not self._poll.poll(max(0, int(timeout * 1000))):
            return False
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.call_fd)
        return True

    def wait_used(self, want: int = 1, timeout: float = 5.0) -> bool:
        """Wait until WANT used entries are pending; False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.ring.arm(want):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # Bounded naps: a missed wake-up costs latency, never a hang.
            self.wait_call(min(left, 0.05))
        return True

    def close(self) -> None:
        os.close(self.kick_fd)
        os.close(self.call_fd)


def wait_any(queues: Sequence[Queue], timeout: float) -> bool:
    """Sleep until any of QUEUES is signalled (consuming the signals) or TIMEOUT passes."""
    ready, _, _ = select.select([q.call_fd for q in queues], [], [], max(0.0, timeout))
    for fd in ready:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(fd)
    return bool(ready)


@dataclass
class Negotiated:
    features: int = 0
    protocol: int = 0
    offered_features: int = 0
    offered_protocol: int = 0
    num_queues: int = 0
    max_mem_slots: int = 0


class Frontend:
    """One vhost-user-fs connection with its guest memory and queues.

    Queue 0 is hiprio (FORGET); queues 1..request_queues carry requests.
    """

    def __init__(
        self,
        socket_path: str,
        *,
        mem_size: int = 256 << 20,
        request_queues: int = 1,
        queue_size: int = 1024,
        event_idx: bool = True,
        indirect: bool = True,
        reply_ack: bool = True,
        add_mem_reg: bool = False,
        timeout: float = 5.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.socket_path = socket_path
        self.want_request_queues = request_queues
        self.queue_size = queue_size
        self.want_event_idx = event_idx
        self.want_indirect = indirect
        self.want_reply_ack = reply_ack
        self.want_add_mem_reg = add_mem_reg
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.mem = GuestMemory()
        self.mem.add(mem_size, gpa=0)
        self.neg = Negotiated()
        self.queues: list[Queue] = []
        self.conn: Connection | None = None

    # ------------------------------------------------------------ messaging

    @property
    def c(self) -> Connection:
        if self.conn is None:
            raise BackendGone("not connected")
        return self.conn

    def raw_send(
        self, request: int, payload: bytes = b"", fds: Sequence[int] = (), flags: int = vm.VERSION
    ) -> None:
        """Send anything: any request number, flags and fds (for fuzzing)."""
        self.c.send(vm.message(request, payload, flags), fds)

    def send(self, request: int, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        """A message without its own reply; with REPLY_ACK, ask for and check the ack."""
        ack = bool(self.neg.protocol & vm.P_REPLY_ACK) and request not in vm.REPLYING
        flags = vm.VERSION | (vm.FLAG_NEED_REPLY if ack else 0)
        self.raw_send(request, payload, fds, flags)
        if ack:
            status = vm.reply_u64(self.c.recv_reply(request, self.timeout))
            if status:
                raise VhostNack(request, status)

    def call(self, request: int, payload: bytes = b"") -> bytes:
        """A message with its own reply."""
        self.raw_send(request, payload)
        return self.c.recv_reply(request, self.timeout)

    def alive(self) -> bool:
        return self.conn is not None and not self.conn.peer_closed()

    # ------------------------------------------------------------ start sequence

    def start(self) -> Frontend:
        """The whole QEMU 7.2+ start sequence: connect, negotiate, memory, every ring."""
        self.conn = Connection(connect(self.socket_path, self.connect_timeout), self.timeout)
        self.negotiate()
        self.share_memory()
        for i in range(1 + self.request_queues):
            self.queues.append(self.new_queue(i))
        for q in self.queues:
            self.setup_queue(q)
        for q in self.queues:
            self.enable_queue(q.index, True)
        return self

    @property
    def request_queues(self) -> int:
        if self.neg.num_queues:
            return max(1, min(self.want_request_queues, self.neg.num_queues - 1))
        return 1

    @property
    def event_idx(self) -> bool:
        return bool(self.neg.features & vm.F_EVENT_IDX)

    @property
    def indirect(self) -> bool:
        return bool(self.neg.features & vm.F_INDIRECT_DESC)

    def negotiate(self) -> None:
        n = self.neg
        n.offered_features = vm.reply_u64(self.call(vm.Req.GET_FEATURES))
        want = vm.F_VERSION_1 | vm.F_PROTOCOL_FEATURES
        want |= vm.F_EVENT_IDX if self.want_event_idx else 0
        want |= vm.F_INDIRECT_DESC if self.want_indirect else 0
        n.features = n.offered_features & want
        if n.features & vm.F_PROTOCOL_FEATURES:
            n.offered_protocol = vm.reply_u64(self.call(vm.Req.GET_PROTOCOL_FEATURES))
            want_p = vm.P_MQ | vm.P_CONFIGURE_MEM_SLOTS
            want_p |= vm.P_REPLY_ACK if self.want_reply_ack else 0
            proto = n.offered_protocol & want_p
            self.send(vm.Req.SET_PROTOCOL_FEATURES, vm.u64(proto))
            n.protocol = proto  # acks start after SET_PROTOCOL_FEATURES itself
            if proto & vm.P_MQ:
                n.num_queues = vm.reply_u64(self.call(vm.Req.GET_QUEUE_NUM))
            if proto & vm.P_CONFIGURE_MEM_SLOTS:
                n.max_mem_slots = vm.reply_u64(self.call(vm.Req.GET_MAX_MEM_SLOTS))
        self.send(vm.Req.SET_OWNER)
        vm.reply_u64(self.call(vm.Req.GET_FEATURES))
        self.send(vm.Req.SET_FEATURES, vm.u64(n.features))

    def share_memory(self) -> None:
        if self.want_add_mem_reg and self.neg.protocol & vm.P_CONFIGURE_MEM_SLOTS:
            for r in self.mem.regions:
                self.send(vm.Req.ADD_MEM_REG, vm.single_region(r.wire()), [r.fd])
        else:
            self.set_mem_table()

    def set_mem_table(self) -> None:
        regions = self.mem.regions
        self.send(
            vm.Req.SET_MEM_TABLE, vm.mem_table([r.wire() for r in regions]), [r.fd for r in regions]
        )

    def add_region(self, size: int) -> GuestRegion:
        """Hot-add guest RAM (ADD_MEM_REG if CONFIGURE_MEM_SLOTS, else a new SET_MEM_TABLE)."""
        region = self.mem.add(size)
        if self.neg.protocol & vm.P_CONFIGURE_MEM_SLOTS:
            self.send(vm.Req.ADD_MEM_REG, vm.single_region(region.wire()), [region.fd])
        else:
            self.set_mem_table()
        return region

    def remove_region(self, region: GuestRegion) -> None:
        if self.neg.protocol & vm.P_CONFIGURE_MEM_SLOTS:
            # The spec says no fd here (back-ends match on addresses; some reject an fd).
            self.send(vm.Req.REM_MEM_REG, vm.single_region(region.wire()))
            self.mem.remove(region)
        else:
            self.mem.remove(region)
            self.set_mem_table()

    def new_queue(self, index: int, size: int | None = None) -> Queue:
        ring = SplitRing(self.mem, size or self.queue_size, event_idx=self.event_idx)
        return Queue(index, ring)

    def setup_queue(self, q: Queue, base: int = 0) -> None:
        r = q.ring
        self.send(vm.Req.SET_VRING_NUM, vm.vring_state(q.index, r.size))
        self.send(vm.Req.SET_VRING_BASE, vm.vring_state(q.index, base))
        self.send(
            vm.Req.SET_VRING_ADDR,
            vm.vring_addr(
                q.index,
                self.mem.uaddr(r.desc_gpa),
                self.mem.uaddr(r.used_gpa),
                self.mem.uaddr(r.avail_gpa),
            ),
        )
        self.send(vm.Req.SET_VRING_KICK, vm.u64(q.index), [q.kick_fd])
        self.send(vm.Req.SET_VRING_CALL, vm.u64(q.index), [q.call_fd])

    def replace_call(self, index: int) -> None:
        """A new call eventfd, as QEMU does when it masks/unmasks a guest interrupt."""
        q = self.queues[index]
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.send(vm.Req.SET_VRING_CALL, vm.u64(index), [fd])
        q.set_call_fd(fd)

    def enable_queue(self, index: int, on: bool) -> None:
        if self.neg.features & vm.F_PROTOCOL_FEATURES:
            self.send(vm.Req.SET_VRING_ENABLE, vm.vring_state(index, int(on)))
        self.queues[index].enabled = on

    # ------------------------------------------------------------ stop / restart

    def stop_queue(self, index: int) -> int:
        """QEMU's stop: disable, then GET_VRING_BASE; returns the device's next avail index."""
        self.enable_queue(index, False)
        qi, num = vm.reply_vring_state(self.call(vm.Req.GET_VRING_BASE, vm.vring_state(index, 0)))
        if qi != index:
            raise vm.ReplyError(f"GET_VRING_BASE answered for queue {qi}, asked {index}")
        return num

    def restart_queue(self, index: int, base: int) -> None:
        """Set the ring up again where it stopped (its memory and indices are kept)."""
        q = self.queues[index]
        self.setup_queue(q, base)
        self.enable_queue(index, True)

    def stop(self) -> dict[int, int]:
        return {q.index: self.stop_queue(q.index) for q in self.queues}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        for q in self.queues:
            q.close()
        self.queues.clear()
        self.mem.close()

    def __enter__(self) -> Frontend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
