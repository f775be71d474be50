"""vhost-user messages as a front-end (QEMU) writes and reads them. Sans-I/O: bytes only.

From QEMU's docs/interop/vhost-user.rst; independent of the daemon's own codec.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass


class Req(enum.IntEnum):
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
    SET_BACKEND_REQ_FD = 21
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


# Messages that carry their own reply (REPLY_ACK never adds a second one).
REPLYING = frozenset(
    {
        Req.GET_FEATURES,
        Req.GET_PROTOCOL_FEATURES,
        Req.GET_VRING_BASE,
        Req.GET_QUEUE_NUM,
        Req.GET_CONFIG,
        Req.GET_INFLIGHT_FD,
        Req.GET_MAX_MEM_SLOTS,
        Req.GET_STATUS,
    }
)

VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
VRING_NOFD = 1 << 8

# virtio feature bits
F_INDIRECT_DESC = 1 << 28
F_EVENT_IDX = 1 << 29
F_PROTOCOL_FEATURES = 1 << 30
F_VERSION_1 = 1 << 32

# protocol feature bits
P_MQ = 1 << 0
P_REPLY_ACK = 1 << 3
P_BACKEND_REQ = 1 << 5
P_CONFIG = 1 << 9
P_CONFIGURE_MEM_SLOTS = 1 << 15
P_STATUS = 1 << 16

HEADER = struct.Struct("<III")
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
REGION = struct.Struct("<QQQQ")
MAX_FDS = 8


class ReplyError(Exception):
    """The back-end's reply does not follow the vhost-user framing rules."""


@dataclass(frozen=True)
class Region:
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int = 0

    def pack(self) -> bytes:
        return REGION.pack(
            self.guest_phys_addr, self.memory_size, self.userspace_addr, self.mmap_offset
        )


def message(request: int, payload: bytes = b"", flags: int = VERSION) -> bytes:
    """Header + payload; any request number and flags, for fuzzing too."""
    return HEADER.pack(request, flags, len(payload)) + payload


def u64(value: int) -> bytes:
    return U64.pack(value)


def vring_state(index: int, num: int) -> bytes:
    return VRING_STATE.pack(index, num)


def vring_addr(index: int, desc: int, used: int, avail: int, flags: int = 0, log: int = 0) -> bytes:
    return VRING_ADDR.pack(index, flags, desc, used, avail, log)


def mem_table(regions: list[Region]) -> bytes:
    return VRING_STATE.pack(len(regions), 0) + b"".join(r.pack() for r in regions)


def single_region(region: Region) -> bytes:
    return U64.pack(0) + region.pack()


def parse_header(data: bytes) -> tuple[int, int, int]:
    """(request, flags, size) of a 12-byte header."""
    req, flags, size = HEADER.unpack(data)
    return int(req), int(flags), int(size)


def check_reply_header(request: int, data: bytes) -> int:
    """Validate a reply header the way QEMU does; return the payload size."""
    req, flags, size = parse_header(data)
    if req != request:
        raise ReplyError(f"reply to request {req}, expected {request}")
    if flags != VERSION | FLAG_REPLY:
        raise ReplyError(f"reply flags {flags:#x}, expected 0x5")
    if size > 4096:
        raise ReplyError(f"reply payload {size} bytes")
    return size


def reply_u64(payload: bytes) -> int:
    if len(payload) != 8:
        raise ReplyError(f"u64 reply of {len(payload)} bytes")
    return int(U64.unpack(payload)[0])


def reply_vring_state(payload: bytes) -> tuple[int, int]:
    if len(payload) != 8:
        raise ReplyError(f"vring state reply of {len(payload)} bytes")
    index, num = VRING_STATE.unpack(payload)
    return int(index), int(num)
