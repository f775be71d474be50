"""vhost-user wire format: request codes, header and payload structs, validation. Sans-I/O.

Everything here turns bytes into typed values or back; nothing touches a socket. Every
payload is checked for its exact size and every request for the file descriptors it may
carry before anyone looks at its fields: a front-end's mistake is a :class:`MessageError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from ..errors import GuestError

HEADER = struct.Struct("=III")
HEADER_SIZE = HEADER.size  # 12
VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
MAX_PAYLOAD = 4096  # far above the largest message we accept (GET_CONFIG, 12 + 256)
MAX_FDS = 8  # per message, as QEMU sends them
MEM_TABLE_MAX_REGIONS = 8  # SET_MEM_TABLE's fixed array
CONFIG_MAX_SIZE = 256
VRING_NOFD = 0x100  # KICK/CALL/ERR payload: no fd attached
VRING_INDEX_MASK = 0xFF


class MessageError(GuestError):
    """A vhost-user message that does not parse or does not fit its request."""


class Request(IntEnum):
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    RESET_DEVICE = 34
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


def request_name(code: int) -> str:
    try:
        return Request(code).name
    except ValueError:
        return f"request {code}"


class Feature:
    """Virtio feature bits (as masks) the transport layer cares about."""

    INDIRECT_DESC = 1 << 28
    EVENT_IDX = 1 << 29
    PROTOCOL_FEATURES = 1 << 30  # vhost-user's own bit
    VERSION_1 = 1 << 32


class ProtocolFeature:
    """vhost-user protocol feature bits (as masks)."""

    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    REPLY_ACK = 1 << 3
    BACKEND_REQ = 1 << 5
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16


@dataclass(frozen=True)
class Header:
    request: int
    flags: int
    size: int

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        if len(data) != HEADER_SIZE:
            raise MessageError(f"header is {len(data)} bytes, not {HEADER_SIZE}")
        return cls(*HEADER.unpack(data))

    def pack(self) -> bytes:
        return HEADER.pack(self.request, self.flags, self.size)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    def check(self) -> None:
        """Framing is fine (size known) but the flags may still be wrong for a request."""
        if self.flags & 0x3 != VERSION:
            raise MessageError(f"unsupported vhost-user version {self.flags & 0x3}")
        if self.flags & FLAG_REPLY:
            raise MessageError("request carries the REPLY flag")


class _Fixed:
    """A payload with one fixed struct layout."""

    FMT: ClassVar[struct.Struct]

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        if len(data) != cls.FMT.size:
            raise MessageError(f"{cls.__name__} payload is {len(data)} bytes, not {cls.FMT.size}")
        return cls(*cls.FMT.unpack(data))

    def pack(self) -> bytes:
        return self.FMT.pack(*self.__dict__.values())


@dataclass(frozen=True)
class U64(_Fixed):
    FMT = struct.Struct("=Q")
    value: int


@dataclass(frozen=True)
class VringState(_Fixed):
    FMT = struct.Struct("=II")
    index: int
    num: int


@dataclass(frozen=True)
class VringAddr(_Fixed):
    FMT = struct.Struct("=IIQQQQ")
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


@dataclass(frozen=True)
class MemoryRegion(_Fixed):
    FMT = struct.Struct("=QQQQ")
    gpa: int
    size: int
    uaddr: int
    mmap_offset: int

    def check(self) -> None:
        end = 1 << 64
        if self.size == 0:
            raise MessageError("memory region of size 0")
        for name, base in (("guest", self.gpa), ("user", self.uaddr), ("mmap", self.mmap_offset)):
            if base + self.size > end:
                raise MessageError(f"memory region {name} range wraps around")

    def __str__(self) -> str:
        return f"gpa {self.gpa:#x} size {self.size:#x} uaddr {self.uaddr:#x}"


@dataclass(frozen=True)
class MemTable:
    regions: tuple[MemoryRegion, ...]

    _HEAD: ClassVar[struct.Struct] = struct.Struct("=II")

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        if len(data) < cls._HEAD.size:
            raise MessageError(f"SET_MEM_TABLE payload is {len(data)} bytes")
        nregions, _pad = cls._HEAD.unpack_from(data)
        if not 0 < nregions <= MEM_TABLE_MAX_REGIONS:
            raise MessageError(f"SET_MEM_TABLE with {nregions} regions")
        want = cls._HEAD.size + nregions * MemoryRegion.FMT.size
        if len(data) != want:
            raise MessageError(f"SET_MEM_TABLE payload is {len(data)} bytes, not {want}")
        size = MemoryRegion.FMT.size
        return cls(
            tuple(
                MemoryRegion.unpack(data[8 + i * size : 8 + (i + 1) * size])
                for i in range(nregions)
            )
        )

    def pack(self) -> bytes:
        return self._HEAD.pack(len(self.regions), 0) + b"".join(r.pack() for r in self.regions)


@dataclass(frozen=True)
class MemRegionMsg:
    """ADD_MEM_REG / REM_MEM_REG: u64 padding, then one region."""

    region: MemoryRegion

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        if len(data) != 8 + MemoryRegion.FMT.size:
            raise MessageError(f"memory region message payload is {len(data)} bytes, not 40")
        return cls(MemoryRegion.unpack(data[8:]))

    def pack(self) -> bytes:
        return bytes(8) + self.region.pack()


@dataclass(frozen=True)
class Config:
    offset: int
    size: int
    flags: int
    data: bytes

    _HEAD: ClassVar[struct.Struct] = struct.Struct("=III")

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        if len(data) < cls._HEAD.size:
            raise MessageError(f"config payload is {len(data)} bytes")
        offset, size, flags = cls._HEAD.unpack_from(data)
        if size > CONFIG_MAX_SIZE or len(data) != cls._HEAD.size + size:
            raise MessageError(f"config payload of {len(data)} bytes announces {size} data bytes")
        if offset + size > CONFIG_MAX_SIZE:
            raise MessageError(f"config range {offset}+{size} beyond {CONFIG_MAX_SIZE}")
        return cls(offset, size, flags, data[cls._HEAD.size :])

    def pack(self) -> bytes:
        return self._HEAD.pack(self.offset, len(self.data), self.flags) + self.data


@dataclass(frozen=True)
class Inflight(_Fixed):
    FMT = struct.Struct("=QQHHxxxx")
    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int


@dataclass(frozen=True)
class Empty:
    @classmethod
    def unpack(cls, data: bytes) -> Self:
        if data:
            raise MessageError(f"unexpected {len(data)}-byte payload")
        return cls()

    def pack(self) -> bytes:
        return b""


Payload = Empty | U64 | VringState | VringAddr | MemTable | MemRegionMsg | Config | Inflight

R = Request
# Payload type of each request we understand. Unknown requests are not decoded.
PAYLOADS: dict[int, type[Payload]] = {
    R.GET_FEATURES: Empty,
    R.SET_FEATURES: U64,
    R.SET_OWNER: Empty,
    R.RESET_OWNER: Empty,
    R.SET_MEM_TABLE: MemTable,
    R.SET_LOG_BASE: Empty,  # never accepted; decoded only to fail cleanly
    R.SET_LOG_FD: Empty,
    R.SET_VRING_NUM: VringState,
    R.SET_VRING_ADDR: VringAddr,
    R.SET_VRING_BASE: VringState,
    R.GET_VRING_BASE: VringState,
    R.SET_VRING_KICK: U64,
    R.SET_VRING_CALL: U64,
    R.SET_VRING_ERR: U64,
    R.GET_PROTOCOL_FEATURES: Empty,
    R.SET_PROTOCOL_FEATURES: U64,
    R.GET_QUEUE_NUM: Empty,
    R.SET_VRING_ENABLE: VringState,
    R.SET_BACKEND_REQ_FD: Empty,
    R.GET_CONFIG: Config,
    R.SET_CONFIG: Config,
    R.GET_INFLIGHT_FD: Inflight,
    R.SET_INFLIGHT_FD: Inflight,
    R.RESET_DEVICE: Empty,
    R.GET_MAX_MEM_SLOTS: Empty,
    R.ADD_MEM_REG: MemRegionMsg,
    R.REM_MEM_REG: MemRegionMsg,
    R.SET_STATUS: U64,
    R.GET_STATUS: Empty,
}

# Requests answered with their own reply (REPLY_ACK never adds a second one).
HAS_REPLY = frozenset(
    {
        R.GET_FEATURES,
        R.GET_PROTOCOL_FEATURES,
        R.GET_QUEUE_NUM,
        R.GET_VRING_BASE,
        R.GET_CONFIG,
        R.GET_INFLIGHT_FD,
        R.GET_MAX_MEM_SLOTS,
        R.GET_STATUS,
    }
)

_ONE_FD = frozenset({R.SET_LOG_BASE, R.SET_LOG_FD, R.SET_BACKEND_REQ_FD, R.SET_INFLIGHT_FD})
_VRING_FD = frozenset({R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR})


def fds_allowed(request: int, payload: Payload) -> tuple[int, int]:
    """(min, max) number of fds a decoded request may carry."""
    if isinstance(payload, MemTable):
        return len(payload.regions), len(payload.regions)
    if request == R.ADD_MEM_REG or request in _ONE_FD:
        return 1, 1
    if request == R.REM_MEM_REG:
        return 0, 1  # QEMU attaches the region's fd; the spec says none
    if request in _VRING_FD and isinstance(payload, U64):
        return (0, 0) if payload.value & VRING_NOFD else (1, 1)
    return 0, 0


def decode(header: Header, payload: bytes, nfds: int) -> Payload:
    """Decode and validate one request's payload; raises MessageError."""
    header.check()
    kind = PAYLOADS.get(header.request)
    if kind is None:
        raise MessageError(f"unknown {request_name(header.request)}")
    if len(payload) != header.size:
        raise MessageError(f"payload is {len(payload)} bytes, header says {header.size}")
    value = kind.unpack(payload)
    lo, hi = fds_allowed(header.request, value)
    if not lo <= nfds <= hi:
        want = str(lo) if lo == hi else f"{lo}..{hi}"
        raise MessageError(f"{request_name(header.request)} with {nfds} fds, expected {want}")
    return value


def encode(request: int, payload: bytes = b"", flags: int = VERSION) -> bytes:
    return HEADER.pack(request, flags, len(payload)) + payload


def encode_reply(request: int, payload: bytes = b"") -> bytes:
    """A reply: flags exactly VERSION|REPLY (QEMU rejects anything else)."""
    return encode(request, payload, VERSION | FLAG_REPLY)
