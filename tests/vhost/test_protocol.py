"""The back-end state machine, fed the message sequences QEMU and cloud-hypervisor send."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtiofsd_nydus.errors import GuestError
from virtiofsd_nydus.vhost import message as m
from virtiofsd_nydus.vhost import protocol as p
from virtiofsd_nydus.vhost.device import VirtioDevice
from virtiofsd_nydus.vhost.message import Request as R
from virtiofsd_nydus.vhost.vring import Chain, Virtqueue

FEATURES = 0x1_7000_0000  # VERSION_1 | PROTOCOL_FEATURES | EVENT_IDX | INDIRECT_DESC
PROTO = 0x8009  # CONFIGURE_MEM_SLOTS | REPLY_ACK | MQ
NEED = m.VERSION | m.FLAG_NEED_REPLY
UADDR = 0x7F00_0000_0000
REGION = m.MemoryRegion(0, 1 << 30, UADDR, 0)
ACK_OK = m.U64(0).pack()
ACK_FAIL = m.U64(1).pack()


class Dev(VirtioDevice):
    num_queues = 2

    def handle(self, queue: Virtqueue, chains: Sequence[Chain]) -> None:
        raise AssertionError("no chains in protocol tests")


class ConfigDev(Dev):
    def __init__(self) -> None:
        self.space = bytearray(b"tag\0" + bytes(36))

    def config(self) -> bytes | None:
        return bytes(self.space)

    def set_config(self, offset: int, data: bytes) -> None:
        if offset + len(data) > 4:
            raise GuestError("only the first 4 bytes are writable")
        self.space[offset : offset + len(data)] = data


def send(
    proto: p.BackendProtocol,
    request: int,
    payload: bytes = b"",
    flags: int = m.VERSION,
    fds: Sequence[int] = (),
) -> p.Outcome:
    wire = m.encode(request, payload, flags)
    return proto.handle(m.Header.unpack(wire[:12]), wire[12:], list(fds))


def reply_of(out: p.Outcome, ok: bool = True) -> bytes | None:
    return out.finish(ok)


def u64_reply(request: int, value: int) -> bytes:
    return m.encode_reply(request, m.U64(value).pack())


def ring_setup_qemu(proto: p.BackendProtocol, index: int, flags: int) -> list[p.Outcome]:
    base = 0x10000 * (index + 1)
    return [
        send(proto, R.SET_VRING_NUM, m.VringState(index, 1024).pack(), flags),
        send(proto, R.SET_VRING_BASE, m.VringState(index, 0).pack(), flags),
        send(
            proto,
            R.SET_VRING_ADDR,
            m.VringAddr(
                index, 0, UADDR + base, UADDR + base + 0x8000, UADDR + base + 0x4000, 0
            ).pack(),
            flags,
        ),
        send(proto, R.SET_VRING_KICK, m.U64(index).pack(), flags, [100 + index]),
        send(proto, R.SET_VRING_CALL, m.U64(index).pack(), flags, [200 + index]),
    ]


def test_qemu_7_2_sequence() -> None:
    proto = p.BackendProtocol(Dev())
    # Realize.
    assert reply_of(send(proto, R.GET_FEATURES)) == u64_reply(R.GET_FEATURES, FEATURES)
    out = send(proto, R.GET_PROTOCOL_FEATURES)
    assert reply_of(out) == u64_reply(R.GET_PROTOCOL_FEATURES, PROTO)
    assert reply_of(send(proto, R.SET_PROTOCOL_FEATURES, m.U64(PROTO).pack())) is None
    assert reply_of(send(proto, R.GET_QUEUE_NUM)) == u64_reply(R.GET_QUEUE_NUM, 2)
    assert reply_of(send(proto, R.GET_MAX_MEM_SLOTS)) == u64_reply(R.GET_MAX_MEM_SLOTS, 509)
    assert reply_of(send(proto, R.SET_OWNER)) is None
    assert reply_of(send(proto, R.GET_FEATURES)) == u64_reply(R.GET_FEATURES, FEATURES)
    # DRIVER_OK.
    out = send(proto, R.SET_FEATURES, m.U64(FEATURES).pack())
    assert out.actions == [p.SetFeatures(FEATURES)] and reply_of(out) is None
    out = send(proto, R.ADD_MEM_REG, m.MemRegionMsg(REGION).pack(), NEED, [7])
    assert out.actions == [p.AddRegion(REGION, 7)]
    assert reply_of(out) == m.encode_reply(R.ADD_MEM_REG, ACK_OK)
    for index in (0, 1):
        outs = ring_setup_qemu(proto, index, m.VERSION)
        assert all(o.error is None and reply_of(o) is None for o in outs)
        base = 0x10000 * (index + 1)
        config = p.RingConfig(1024, 0, base, base + 0x4000, base + 0x8000, True)
        assert outs[3].actions == [p.StartRing(index, config, 100 + index)]
        assert outs[4].actions == [p.SetCall(index, 200 + index)]
    for index in (0, 1):
        out = send(proto, R.SET_VRING_ENABLE, m.VringState(index, 1).pack())
        assert out.actions == [p.EnableRing(index, True)]
    assert proto.ring_enabled(0) and proto.ring_enabled(1)
    # Stop: disable, then GET_VRING_BASE waits for the I/O layer.
    out = send(proto, R.SET_VRING_ENABLE, m.VringState(0, 0).pack())
    assert out.actions == [p.EnableRing(0, False)]
    out = send(proto, R.GET_VRING_BASE, m.VringState(0, 0).pack())
    assert out.deferred and out.actions == [p.StopRing(0)] and reply_of(out) is None
    assert proto.ring_stopped(0, 77) == m.encode_reply(R.GET_VRING_BASE, m.VringState(0, 77).pack())
    # A stopped ring answers at once, with the base it stopped at.
    out = send(proto, R.GET_VRING_BASE, m.VringState(0, 0).pack(), NEED)
    assert reply_of(out) == m.encode_reply(R.GET_VRING_BASE, m.VringState(0, 77).pack())
    # Restart continues from there.
    outs = ring_setup_qemu(proto, 0, m.VERSION)
    assert isinstance(outs[3].actions[0], p.StartRing)
    assert outs[3].actions[0].config.size == 1024


def test_cloud_hypervisor_sequence_need_reply_everywhere() -> None:
    proto = p.BackendProtocol(Dev())
    assert reply_of(send(proto, R.GET_FEATURES, flags=NEED)) == u64_reply(R.GET_FEATURES, FEATURES)
    assert reply_of(send(proto, R.GET_PROTOCOL_FEATURES, flags=NEED)) == u64_reply(
        R.GET_PROTOCOL_FEATURES, PROTO
    )
    # The request that turns REPLY_ACK on is acked already.
    out = send(proto, R.SET_PROTOCOL_FEATURES, m.U64(PROTO).pack(), NEED)
    assert reply_of(out) == m.encode_reply(R.SET_PROTOCOL_FEATURES, ACK_OK)
    replies: list[tuple[int, bytes | None]] = []

    def go(request: int, payload: bytes = b"", fds: Sequence[int] = ()) -> p.Outcome:
        out = send(proto, request, payload, NEED, fds)
        assert out.error is None, out.error
        replies.append((request, reply_of(out)))
        return out

    go(R.SET_OWNER)
    go(R.SET_FEATURES, m.U64(FEATURES).pack())
    out = go(R.SET_MEM_TABLE, m.MemTable((REGION,)).pack(), [9])
    assert out.actions == [p.SetMemTable(((REGION, 9),))]
    for index in (0, 1):
        go(R.SET_VRING_NUM, m.VringState(index, 256).pack())
    for index in (0, 1):
        go(R.SET_VRING_ADDR, m.VringAddr(index, 0, UADDR, UADDR + 0x2000, UADDR + 0x1000, 0).pack())
        go(R.SET_VRING_BASE, m.VringState(index, 5).pack())
        go(R.SET_VRING_CALL, m.U64(index).pack(), [30 + index])
        out = go(R.SET_VRING_KICK, m.U64(index).pack(), [40 + index])
        assert out.actions == [
            p.StartRing(index, p.RingConfig(256, 5, 0, 0x1000, 0x2000, True), 40 + index)
        ]
        go(R.SET_VRING_ENABLE, m.VringState(index, 1).pack())
    # Exactly one reply per request: a u64 ack of 0.
    assert all(r == m.encode_reply(req, ACK_OK) for req, r in replies)
    assert len(replies) == 15
    # A GET with NEED_REPLY still gets only its own reply.
    out = send(proto, R.GET_QUEUE_NUM, flags=NEED)
    assert reply_of(out) == u64_reply(R.GET_QUEUE_NUM, 2) and not out.ack


def test_qemu_before_7_2_enables_all_rings_on_set_features() -> None:
    proto = p.BackendProtocol(Dev())
    old = FEATURES & ~m.Feature.PROTOCOL_FEATURES
    out = send(proto, R.SET_FEATURES, m.U64(old).pack())
    assert out.actions == [p.SetFeatures(old), p.EnableRing(0, True), p.EnableRing(1, True)]
    # Nothing of protocol features: SET_VRING_ENABLE is refused.
    out = send(proto, R.SET_VRING_ENABLE, m.VringState(0, 1).pack())
    assert out.error is not None and out.actions == []
    # The bit is tested as a mask (1 << 30), not as the number 30.
    proto = p.BackendProtocol(Dev())
    out = send(proto, R.SET_FEATURES, m.U64(FEATURES).pack())
    assert out.actions == [p.SetFeatures(FEATURES)]
    out = send(proto, R.SET_FEATURES, m.U64(30 | (1 << 32)).pack())
    assert out.error is not None  # bits 1..4 were never offered


def acked() -> p.BackendProtocol:
    proto = p.BackendProtocol(Dev())
    send(proto, R.SET_PROTOCOL_FEATURES, m.U64(PROTO).pack())
    send(proto, R.SET_FEATURES, m.U64(FEATURES).pack())
    return proto


FAILING = [
    (99, b"", [5], "unknown request 99"),
    (R.SET_MEM_TABLE, m.MemTable((REGION, REGION)).pack(), [1], "expected 2"),
    (R.SET_MEM_TABLE, m.MemTable((REGION, REGION)).pack(), [1, 2], "overlaps"),
    (R.SET_VRING_NUM, m.VringState(0, 1000).pack(), [], "power of two"),
    (R.SET_VRING_NUM, m.VringState(0, 65536).pack(), [], "power of two"),
    (R.SET_VRING_NUM, m.VringState(2, 8).pack(), [], "out of range"),
    (R.SET_VRING_BASE, m.VringState(0, 0x10000).pack(), [], "16 bits"),
    (R.SET_VRING_ADDR, m.VringAddr(0, 0, 0x10, 0x20, 0x30, 0).pack(), [], "not inside"),
    (R.SET_VRING_ADDR, m.VringAddr(0, 1, UADDR, UADDR, UADDR, 0).pack(), [], "logging"),
    (R.SET_VRING_KICK, m.U64(0).pack(), [3], "before its size"),
    (R.SET_VRING_KICK, m.U64(0x100).pack(), [], "polling"),
    (R.SET_VRING_CALL, m.U64(0x200).pack(), [3], "reserved bits"),
    (R.SET_VRING_CALL, m.U64(5).pack(), [3], "out of range"),
    (R.SET_VRING_CALL, m.U64(0).pack(), [], "expected 1"),
    (R.SET_VRING_ENABLE, m.VringState(0, 2).pack(), [], "enable value"),
    (R.SET_FEATURES, m.U64(1 << 34).pack(), [], "not offered"),
    (R.SET_PROTOCOL_FEATURES, m.U64(1 << 9).pack(), [], "not offered"),
    (R.SET_LOG_BASE, b"", [3], "not supported"),
    (R.SET_LOG_FD, b"", [3], "not supported"),
    (R.SET_BACKEND_REQ_FD, b"", [3], "not supported"),
    (R.SET_INFLIGHT_FD, m.Inflight(0, 0, 0, 0).pack(), [3], "not supported"),
    (R.REM_MEM_REG, m.MemRegionMsg(REGION).pack(), [], "no memory region"),
    (R.ADD_MEM_REG, m.MemRegionMsg(m.MemoryRegion(0, 0, 0, 0)).pack(), [3], "size 0"),
    (R.SET_CONFIG, m.Config(0, 1, 0, b"x").pack(), [], "not offered"),
    (R.SET_STATUS, m.U64(0x100).pack(), [], "8 bits"),
    (R.SET_OWNER, b"\0", [4], "unexpected 1-byte payload"),
]


@pytest.mark.parametrize(("request_", "payload", "fds", "why"), FAILING)
def test_failures_fail_only_that_message(
    request_: int, payload: bytes, fds: list[int], why: str
) -> None:
    proto = acked()
    out = send(proto, request_, payload, NEED, fds)
    assert out.error is not None and why in out.error
    assert out.actions == [] and out.unused_fds == fds
    assert reply_of(out) == m.encode_reply(request_, ACK_FAIL)
    # Without NEED_REPLY nothing is sent.
    out = send(proto, request_, payload, m.VERSION, fds)
    assert out.error is not None and reply_of(out) is None
    # And the connection carries on.
    assert reply_of(send(proto, R.GET_QUEUE_NUM)) == u64_reply(R.GET_QUEUE_NUM, 2)
    assert reply_of(send(proto, R.SET_OWNER, flags=NEED)) == m.encode_reply(R.SET_OWNER, ACK_OK)


@pytest.mark.parametrize(
    ("request_", "payload"),
    [
        (R.GET_VRING_BASE, m.VringState(9, 0).pack()),
        (R.GET_VRING_BASE, b"\0" * 7),
        (R.GET_FEATURES, b"\0" * 8),
        (R.GET_CONFIG, m.Config(0, 4, 0, bytes(4)).pack()),
        (R.GET_INFLIGHT_FD, m.Inflight(0, 0, 0, 0).pack()),
    ],
)
def test_failed_request_with_its_own_reply_gets_an_empty_reply(
    request_: int, payload: bytes
) -> None:
    out = send(acked(), request_, payload, NEED)
    assert out.error is not None
    assert reply_of(out) == m.encode_reply(request_)  # size 0: the front-end sees an error


def test_failed_action_turns_the_ack_into_a_failure() -> None:
    proto = acked()
    out = send(proto, R.ADD_MEM_REG, m.MemRegionMsg(REGION).pack(), NEED, [3])
    assert reply_of(out, ok=False) == m.encode_reply(R.ADD_MEM_REG, ACK_FAIL)
    proto.forget_region(REGION)
    assert proto.regions == []


def test_memory_slots_and_removal() -> None:
    proto = acked()
    regions = [m.MemoryRegion(i << 20, 1 << 20, UADDR + (i << 20), 0) for i in range(3)]
    for i, r in enumerate(regions):
        assert send(proto, R.ADD_MEM_REG, m.MemRegionMsg(r).pack(), NEED, [i]).error is None
    out = send(proto, R.REM_MEM_REG, m.MemRegionMsg(regions[1]).pack(), NEED, [8])
    assert out.actions == [p.RemoveRegion(regions[1])] and out.unused_fds == [8]
    assert reply_of(out) == m.encode_reply(R.REM_MEM_REG, ACK_OK)
    # SET_MEM_TABLE replaces everything.
    out = send(proto, R.SET_MEM_TABLE, m.MemTable((REGION,)).pack(), NEED, [5])
    assert proto.regions == [REGION]


def test_ring_cannot_change_while_running() -> None:
    proto = acked()
    send(proto, R.ADD_MEM_REG, m.MemRegionMsg(REGION).pack(), m.VERSION, [1])
    ring_setup_qemu(proto, 0, m.VERSION)
    out = send(proto, R.SET_VRING_NUM, m.VringState(0, 8).pack(), NEED)
    assert out.error is not None and "running" in out.error
    # A second kick on a running ring only replaces the fd.
    out = send(proto, R.SET_VRING_KICK, m.U64(0).pack(), NEED, [55])
    assert out.actions == [p.SetKick(0, 55)]


def test_reset_device() -> None:
    proto = acked()
    send(proto, R.ADD_MEM_REG, m.MemRegionMsg(REGION).pack(), m.VERSION, [1])
    ring_setup_qemu(proto, 0, m.VERSION)
    out = send(proto, R.RESET_DEVICE, flags=NEED)
    assert out.actions == [p.Reset()] and proto.acked_features == 0
    assert not proto.rings[0].started


def test_config_space_offered_only_by_devices_that_have_one() -> None:
    assert not p.BackendProtocol(Dev()).protocol_features & m.ProtocolFeature.CONFIG
    dev = ConfigDev()
    proto = p.BackendProtocol(dev)
    assert proto.protocol_features == PROTO | m.ProtocolFeature.CONFIG
    send(proto, R.SET_PROTOCOL_FEATURES, m.U64(proto.protocol_features).pack())
    out = send(proto, R.GET_CONFIG, m.Config(0, 6, 0, bytes(6)).pack(), NEED)
    assert reply_of(out) == m.encode_reply(R.GET_CONFIG, m.Config(0, 6, 0, b"tag\0\0\0").pack())
    out = send(proto, R.GET_CONFIG, m.Config(38, 4, 0, bytes(4)).pack())
    assert reply_of(out) == m.encode_reply(R.GET_CONFIG, m.Config(38, 4, 0, bytes(4)).pack())
    assert send(proto, R.SET_CONFIG, m.Config(0, 2, 0, b"TA").pack()).error is None
    assert dev.space[:3] == b"TAg"
    assert "writable" in (send(proto, R.SET_CONFIG, m.Config(3, 2, 0, b"xx").pack()).error or "")


def test_status() -> None:
    proto = acked()
    send(proto, R.SET_STATUS, m.U64(0xF).pack())
    assert reply_of(send(proto, R.GET_STATUS, flags=NEED)) == u64_reply(R.GET_STATUS, 0xF)


@settings(max_examples=400, deadline=None)
@given(
    request=st.integers(0, 45),
    flags=st.sampled_from([0x1, 0x9, 0x5, 0x0, 0xFF]),
    payload=st.binary(max_size=80),
    nfds=st.integers(0, 3),
)
def test_fuzz_never_raises(request: int, flags: int, payload: bytes, nfds: int) -> None:
    proto = acked()
    send(proto, R.ADD_MEM_REG, m.MemRegionMsg(REGION).pack(), m.VERSION, [1])
    fds = list(range(10, 10 + nfds))
    out = send(proto, request, payload, flags, fds)
    taken: set[int] = set()
    for action in out.actions:
        for name in ("fd", "kick_fd"):
            value = getattr(action, name, None)
            if isinstance(value, int):
                taken.add(value)
        if isinstance(action, p.SetMemTable):
            taken.update(fd for _, fd in action.regions)
    # Every fd is either handed to an action or returned to be closed, never both or lost.
    assert sorted(taken | set(out.unused_fds)) == fds
    assert not taken & set(out.unused_fds)
    if out.deferred:
        proto.ring_stopped(out.actions[0].index, 0)  # type: ignore[union-attr]
    assert reply_of(send(proto, R.GET_QUEUE_NUM)) == u64_reply(R.GET_QUEUE_NUM, 2)


def test_several_request_queues() -> None:
    class Many(Dev):
        num_queues = 9  # virtio-fs: hiprio + 8 request queues

    proto = p.BackendProtocol(Many())
    send(proto, R.SET_PROTOCOL_FEATURES, m.U64(PROTO).pack())
    assert reply_of(send(proto, R.GET_QUEUE_NUM)) == u64_reply(R.GET_QUEUE_NUM, 9)
    assert send(proto, R.SET_VRING_NUM, m.VringState(8, 128).pack()).error is None
    assert "out of range" in (send(proto, R.SET_VRING_NUM, m.VringState(9, 128).pack()).error or "")
    send(proto, R.SET_FEATURES, m.U64(FEATURES & ~m.Feature.PROTOCOL_FEATURES).pack())
    assert all(proto.ring_enabled(i) for i in range(9))


def test_recorded_qemu_7_2_trace() -> None:
    """The order QEMU 7.2.22 really sent (vhost-user-fs-pci, 2 queues): call and err fds
    before SET_FEATURES, NEED_REPLY only on ADD_MEM_REG, call fds swapped while running."""
    proto = p.BackendProtocol(Dev())
    fd = iter(range(100, 200))
    v = m.VERSION
    trace: list[tuple[int, bytes, int, int]] = [  # request, payload, flags, fds
        (R.GET_FEATURES, b"", v, 0),
        (R.GET_PROTOCOL_FEATURES, b"", v, 0),
        (R.SET_PROTOCOL_FEATURES, m.U64(PROTO).pack(), v, 0),
        (R.GET_QUEUE_NUM, b"", v, 0),
        (R.GET_MAX_MEM_SLOTS, b"", v, 0),
        (R.SET_OWNER, b"", v, 0),
        (R.GET_FEATURES, b"", v, 0),
        (R.SET_VRING_CALL, m.U64(0).pack(), v, 1),
        (R.SET_VRING_ERR, m.U64(0).pack(), v, 1),
        (R.SET_VRING_CALL, m.U64(1).pack(), v, 1),
        (R.SET_VRING_ERR, m.U64(1).pack(), v, 1),
        (R.SET_VRING_CALL, m.U64(0).pack(), v, 1),
        (R.SET_VRING_CALL, m.U64(1).pack(), v, 1),
        (R.SET_FEATURES, m.U64(FEATURES).pack(), v, 0),
        (R.ADD_MEM_REG, m.MemRegionMsg(REGION).pack(), NEED, 1),
    ]
    for i in (0, 1):
        base = 0x10000 * (i + 1)
        trace += [
            (R.SET_VRING_NUM, m.VringState(i, 1024).pack(), v, 0),
            (R.SET_VRING_BASE, m.VringState(i, 0).pack(), v, 0),
            (
                R.SET_VRING_ADDR,
                m.VringAddr(
                    i, 0, UADDR + base, UADDR + base + 0x8000, UADDR + base + 0x4000, 0
                ).pack(),
                v,
                0,
            ),
            (R.SET_VRING_KICK, m.U64(i).pack(), v, 1),
        ]
    trace += [(R.SET_VRING_ENABLE, m.VringState(i, 1).pack(), v, 0) for i in (0, 1)]
    trace += [(R.SET_VRING_CALL, m.U64(i).pack(), v, 1) for i in (0, 1)]
    trace += [(R.SET_VRING_ENABLE, m.VringState(i, 0).pack(), v, 0) for i in (0, 1)]
    replies = []
    kinds = []
    for request, payload, flags, nfds in trace:
        out = send(proto, request, payload, flags, [next(fd) for _ in range(nfds)])
        assert out.error is None, out.error
        assert not out.unused_fds
        replies.append(reply_of(out))
        kinds += [type(a).__name__ for a in out.actions]
    sent = [r for r in replies if r is not None]
    assert sent == [
        u64_reply(R.GET_FEATURES, FEATURES),
        u64_reply(R.GET_PROTOCOL_FEATURES, PROTO),
        u64_reply(R.GET_QUEUE_NUM, 2),
        u64_reply(R.GET_MAX_MEM_SLOTS, 509),
        u64_reply(R.GET_FEATURES, FEATURES),
        m.encode_reply(R.ADD_MEM_REG, ACK_OK),
    ]
    assert kinds.count("StartRing") == 2 and kinds.count("SetCall") == 6
    for i in (0, 1):
        out = send(proto, R.GET_VRING_BASE, m.VringState(i, 0).pack())
        assert out.actions == [p.StopRing(i)]
        assert proto.ring_stopped(i, 9 + i) == m.encode_reply(
            R.GET_VRING_BASE, m.VringState(i, 9 + i).pack()
        )
