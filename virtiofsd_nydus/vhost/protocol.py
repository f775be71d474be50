"""The vhost-user back-end state machine. Sans-I/O.

Feed it one request at a time (header, payload bytes, received fds): it updates its state
and returns an :class:`Outcome`: actions for the I/O layer (map this region, start that
ring...), the fds nobody took (to close), and the bytes to send back. A malformed or
unsupported request fails alone: its fds are returned unused, a NEED_REPLY gets a non-zero
ack, a request with its own reply gets an empty one the front-end recognises as an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import GuestError, LocalError
from . import message as m
from .device import VirtioDevice
from .message import Feature, MessageError, ProtocolFeature, Request

R = Request
MAX_MEM_SLOTS = 509  # what GET_MAX_MEM_SLOTS answers (= the C table's VN_MAX_REGIONS)
TRANSPORT_FEATURES = (
    Feature.VERSION_1 | Feature.INDIRECT_DESC | Feature.EVENT_IDX | Feature.PROTOCOL_FEATURES
)
BASE_PROTOCOL_FEATURES = (
    ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIGURE_MEM_SLOTS
)


# ---- actions for the I/O layer ---------------------------------------------------------


@dataclass(frozen=True)
class RingConfig:
    size: int
    base: int  # last_avail_idx to start from
    desc: int  # guest-physical addresses of the three tables
    avail: int
    used: int
    event_idx: bool


@dataclass(frozen=True)
class SetMemTable:
    """Replace every region (each fd: map it, then close it)."""

    regions: tuple[tuple[m.MemoryRegion, int], ...]


@dataclass(frozen=True)
class AddRegion:
    region: m.MemoryRegion
    fd: int


@dataclass(frozen=True)
class RemoveRegion:
    region: m.MemoryRegion


@dataclass(frozen=True)
class StartRing:
    index: int
    config: RingConfig
    kick_fd: int


@dataclass(frozen=True)
class SetKick:
    """A new kick fd for a running ring."""

    index: int
    fd: int


@dataclass(frozen=True)
class SetCall:
    index: int
    fd: int | None


@dataclass(frozen=True)
class SetErr:
    index: int
    fd: int | None


@dataclass(frozen=True)
class StopRing:
    """Stop the ring once its in-flight chains are done, then call ``ring_stopped``."""

    index: int


@dataclass(frozen=True)
class EnableRing:
    index: int
    enabled: bool


@dataclass(frozen=True)
class SetFeatures:
    features: int


@dataclass(frozen=True)
class Reset:
    """Stop every ring at once (no waiting), close ring fds, reset the device."""


Action = (
    SetMemTable
    | AddRegion
    | RemoveRegion
    | StartRing
    | SetKick
    | SetCall
    | SetErr
    | StopRing
    | EnableRing
    | SetFeatures
    | Reset
)


@dataclass
class Outcome:
    request: int
    actions: list[Action] = field(default_factory=list)
    unused_fds: list[int] = field(default_factory=list)
    error: str | None = None  # why the request failed, for the log
    reply: bytes | None = None  # its own reply, ready now
    ack: bool = False  # a REPLY_ACK u64 is owed
    deferred: bool = False  # the reply comes from ring_stopped()

    def finish(self, ok: bool = True) -> bytes | None:
        """Bytes to send once the actions ran (``ok`` False if one of them failed)."""
        if self.ack:
            failed = not ok or self.error is not None
            return m.encode_reply(self.request, m.U64(int(failed)).pack())
        return self.reply


# ---- per-ring state --------------------------------------------------------------------


@dataclass
class _Ring:
    size: int = 0
    base: int = 0
    addr: tuple[int, int, int] | None = None  # desc, avail, used (guest-physical)
    started: bool = False
    enabled: bool = False


class _Fail(Exception):
    """This request fails; its message goes to the log."""


class BackendProtocol:
    """One front-end connection's vhost-user state."""

    def __init__(self, device: VirtioDevice) -> None:
        self.device = device
        self.features = TRANSPORT_FEATURES | device.features
        self.protocol_features = BASE_PROTOCOL_FEATURES
        if device.config() is not None:
            self.protocol_features |= ProtocolFeature.CONFIG
        self.acked_features = 0
        self.acked_protocol_features = 0
        self.owner = False
        self.status = 0
        self.regions: list[m.MemoryRegion] = []
        self.rings = [_Ring() for _ in range(device.num_queues)]
        self._stopping: int | None = None
        self._handlers: dict[int, Callable[[m.Payload, list[int], Outcome], None]] = {
            R.GET_FEATURES: self._get_features,
            R.SET_FEATURES: self._set_features,
            R.SET_OWNER: self._set_owner,
            R.RESET_OWNER: self._reset,
            R.RESET_DEVICE: self._reset,
            R.SET_MEM_TABLE: self._set_mem_table,
            R.ADD_MEM_REG: self._add_mem_reg,
            R.REM_MEM_REG: self._rem_mem_reg,
            R.GET_MAX_MEM_SLOTS: self._get_max_mem_slots,
            R.SET_VRING_NUM: self._set_vring_num,
            R.SET_VRING_ADDR: self._set_vring_addr,
            R.SET_VRING_BASE: self._set_vring_base,
            R.GET_VRING_BASE: self._get_vring_base,
            R.SET_VRING_KICK: self._set_vring_kick,
            R.SET_VRING_CALL: self._set_vring_call,
            R.SET_VRING_ERR: self._set_vring_err,
            R.SET_VRING_ENABLE: self._set_vring_enable,
            R.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            R.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            R.GET_QUEUE_NUM: self._get_queue_num,
            R.GET_CONFIG: self._get_config,
            R.SET_CONFIG: self._set_config,
            R.SET_STATUS: self._set_status,
            R.GET_STATUS: self._get_status,
        }

    @property
    def reply_ack(self) -> bool:
        return bool(self.acked_protocol_features & ProtocolFeature.REPLY_ACK)

    def ring_enabled(self, index: int) -> bool:
        return self.rings[index].enabled

    # ---- entry points ------------------------------------------------------------------

    def handle(self, header: m.Header, payload: bytes, fds: list[int]) -> Outcome:
        """Process one request. Never raises for anything the front-end sent."""
        if self._stopping is not None:
            raise LocalError("request handled while a GET_VRING_BASE reply is pending")
        out = Outcome(header.request)
        try:
            value = m.decode(header, payload, len(fds))
            handler = self._handlers.get(header.request)
            if handler is None:
                raise _Fail(f"{m.request_name(header.request)} is not supported")
            handler(value, fds, out)
        except (MessageError, _Fail) as exc:
            out.actions.clear()
            out.unused_fds = list(fds)
            out.error = f"{m.request_name(header.request)}: {exc}"
            out.deferred = False
            out.reply = m.encode_reply(header.request) if header.request in m.HAS_REPLY else None
        if header.request not in m.HAS_REPLY:
            # Judged after the request: SET_PROTOCOL_FEATURES may just have enabled it.
            out.ack = self.reply_ack and header.need_reply
        return out

    def ring_stopped(self, index: int, last_avail_idx: int) -> bytes:
        """The I/O layer stopped ring ``index``: the GET_VRING_BASE reply."""
        if self._stopping != index:
            raise LocalError(f"ring {index} was not being stopped")
        self._stopping = None
        self.rings[index].base = last_avail_idx
        return m.encode_reply(R.GET_VRING_BASE, m.VringState(index, last_avail_idx).pack())

    def ring_failed(self, index: int) -> None:
        """The I/O layer could not start ring ``index``."""
        self.rings[index].started = False

    def forget_region(self, region: m.MemoryRegion) -> None:
        """The I/O layer could not map ``region``: drop it from the table."""
        if region in self.regions:
            self.regions.remove(region)

    # ---- helpers -----------------------------------------------------------------------

    def _ring(self, index: int) -> _Ring:
        if not 0 <= index < len(self.rings):
            raise _Fail(f"queue index {index} out of range (device has {len(self.rings)})")
        return self.rings[index]

    def _stopped_ring(self, index: int) -> _Ring:
        ring = self._ring(index)
        if ring.started:
            raise _Fail(f"queue {index} is running")
        return ring

    def _uva_to_gpa(self, uva: int, size: int, what: str) -> int:
        for r in self.regions:
            if r.uaddr <= uva and uva + size <= r.uaddr + r.size:
                return r.gpa + (uva - r.uaddr)
        raise _Fail(f"{what} table at {uva:#x}+{size:#x} is not inside one memory region")

    def _check_new_regions(self, new: list[m.MemoryRegion], keep: list[m.MemoryRegion]) -> None:
        placed = list(keep)
        for region in new:
            region.check()
            for other in placed:
                if region.gpa < other.gpa + other.size and other.gpa < region.gpa + region.size:
                    raise _Fail(f"memory region {region} overlaps {other}")
            placed.append(region)
        if len(placed) > MAX_MEM_SLOTS:
            raise _Fail(f"more than {MAX_MEM_SLOTS} memory regions")

    @staticmethod
    def _vring_fd(value: m.Payload, fds: list[int]) -> tuple[int, int | None]:
        assert isinstance(value, m.U64)
        if value.value & ~(m.VRING_INDEX_MASK | m.VRING_NOFD):
            raise _Fail(f"reserved bits set in {value.value:#x}")
        return value.value & m.VRING_INDEX_MASK, (fds[0] if fds else None)

    # ---- handlers (value is already decoded and size/fd-checked) ----------------------

    def _get_features(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        out.reply = m.encode_reply(R.GET_FEATURES, m.U64(self.features).pack())

    def _set_features(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        assert isinstance(value, m.U64)
        extra = value.value & ~self.features
        if extra:
            raise _Fail(f"features {extra:#x} were not offered")
        self.acked_features = value.value
        out.actions.append(SetFeatures(value.value))
        if not value.value & Feature.PROTOCOL_FEATURES:
            # QEMU < 7.2 never sends SET_VRING_ENABLE: rings are enabled from the start.
            for index, ring in enumerate(self.rings):
                ring.enabled = True
                out.actions.append(EnableRing(index, True))

    def _set_owner(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        self.owner = True

    def _reset(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        self.acked_features = 0
        self.status = 0
        self.rings = [_Ring() for _ in self.rings]
        out.actions.append(Reset())

    def _set_mem_table(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        assert isinstance(value, m.MemTable)
        self._check_new_regions(list(value.regions), [])
        self.regions = list(value.regions)
        out.actions.append(SetMemTable(tuple(zip(value.regions, fds, strict=True))))

    def _add_mem_reg(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        assert isinstance(value, m.MemRegionMsg)
        self._check_new_regions([value.region], self.regions)
        self.regions.append(value.region)
        out.actions.append(AddRegion(value.region, fds[0]))

    def _rem_mem_reg(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        assert isinstance(value, m.MemRegionMsg)
        want = value.region
        for region in self.regions:
            # Matched on the guest range only: QEMU sends mmap_offset 0 here.
            if (region.gpa, region.size) == (want.gpa, want.size):
                self.regions.remove(region)
                out.actions.append(RemoveRegion(region))
                out.unused_fds = list(fds)
                return
        raise _Fail(f"no memory region {want}")

    def _get_max_mem_slots(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        out.reply = m.encode_reply(R.GET_MAX_MEM_SLOTS, m.U64(MAX_MEM_SLOTS).pack())

    def _set_vring_num(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        assert isinstance(value, m.VringState)
        ring = self._stopped_ring(value.index)
        num = value.num
        if not 0 < num <= self.device.max_queue_size or num & (num - 1):
            raise _Fail(f"queue size {num} is not a power of two <= {self.device.max_queue_size}")
        ring.size = num

    def _set_vring_base(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        assert isinstance(value, m.VringState)
        ring = self._stopped_ring(value.index)
        if value.num > 0xFFFF:
            raise _Fail(f"ring base {value.num} beyond 16 bits")
        ring.base = value.num

    def _set_vring_addr(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        assert isinstance(value, m.VringAddr)
        ring = self._stopped_ring(value.index)
        if value.flags:
            raise _Fail("dirty logging (VHOST_VRING_F_LOG) is not supported")
        n = max(ring.size, 1)
        desc = self._uva_to_gpa(value.desc, 16 * n, "descriptor")
        avail = self._uva_to_gpa(value.avail, 6 + 2 * n, "avail")
        used = self._uva_to_gpa(value.used, 6 + 8 * n, "used")
        if desc % 16 or avail % 2 or used % 4:
            raise _Fail("ring tables misaligned")
        ring.addr = (desc, avail, used)

    def _get_vring_base(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        assert isinstance(value, m.VringState)
        ring = self._ring(value.index)
        ring.enabled = False
        if not ring.started:
            out.reply = m.encode_reply(
                R.GET_VRING_BASE, m.VringState(value.index, ring.base).pack()
            )
            return
        ring.started = False
        self._stopping = value.index
        out.deferred = True
        out.actions.append(StopRing(value.index))

    def _set_vring_kick(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        index, fd = self._vring_fd(value, fds)
        ring = self._ring(index)
        if fd is None:
            raise _Fail("polling mode (no kick fd) is not supported")
        if ring.started:
            out.actions.append(SetKick(index, fd))
            return
        if ring.size == 0 or ring.addr is None:
            raise _Fail(f"queue {index} kicked before its size and addresses were set")
        if not self.regions:
            raise _Fail(f"queue {index} kicked before any memory was set")
        desc, avail, used = ring.addr
        event_idx = bool(self.acked_features & Feature.EVENT_IDX)
        config = RingConfig(ring.size, ring.base, desc, avail, used, event_idx)
        ring.started = True
        out.actions.append(StartRing(index, config, fd))

    def _set_vring_call(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        index, fd = self._vring_fd(value, fds)
        self._ring(index)
        out.actions.append(SetCall(index, fd))

    def _set_vring_err(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        index, fd = self._vring_fd(value, fds)
        self._ring(index)
        out.actions.append(SetErr(index, fd))

    def _set_vring_enable(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        assert isinstance(value, m.VringState)
        ring = self._ring(value.index)
        if not self.acked_features & Feature.PROTOCOL_FEATURES:
            raise _Fail("SET_VRING_ENABLE without PROTOCOL_FEATURES negotiated")
        if value.num not in (0, 1):
            raise _Fail(f"enable value {value.num}")
        ring.enabled = bool(value.num)
        out.actions.append(EnableRing(value.index, ring.enabled))

    def _get_protocol_features(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        out.reply = m.encode_reply(R.GET_PROTOCOL_FEATURES, m.U64(self.protocol_features).pack())

    def _set_protocol_features(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        assert isinstance(value, m.U64)
        extra = value.value & ~self.protocol_features
        if extra:
            raise _Fail(f"protocol features {extra:#x} were not offered")
        self.acked_protocol_features = value.value

    def _get_queue_num(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        out.reply = m.encode_reply(R.GET_QUEUE_NUM, m.U64(len(self.rings)).pack())

    def _get_config(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        assert isinstance(value, m.Config)
        space = self.device.config()
        if space is None or not self.acked_protocol_features & ProtocolFeature.CONFIG:
            raise _Fail("config space not offered")
        data = space[value.offset : value.offset + value.size]
        data += bytes(value.size - len(data))
        out.reply = m.encode_reply(
            R.GET_CONFIG, m.Config(value.offset, value.size, value.flags, data).pack()
        )

    def _set_config(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        assert isinstance(value, m.Config)
        if not self.acked_protocol_features & ProtocolFeature.CONFIG:
            raise _Fail("config space not offered")
        try:
            self.device.set_config(value.offset, value.data)
        except GuestError as exc:
            raise _Fail(str(exc)) from exc

    def _set_status(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        assert isinstance(value, m.U64)
        if value.value > 0xFF:
            raise _Fail(f"status {value.value:#x} beyond 8 bits")
        self.status = value.value

    def _get_status(self, value: m.Payload, fds: list[int], out: Outcome) -> None:
        out.reply = m.encode_reply(R.GET_STATUS, m.U64(self.status).pack())
