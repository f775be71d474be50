"""The fuzzing side of the driver, proven on the reference virtiofsd 1.13.

It shows the harness tells apart the four fates of a malformed request: answered anyway,
queue broken (worker thread panicked, daemon alive), daemon dead, and a dropped socket.
The reference's own behaviour is what it is; our daemon must do better (error replies).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.frontend import fuse_abi as fa
from tests.frontend.client import FuseClient
from tests.frontend.frontend import Frontend
from tests.frontend.fuzz import Outcome, RawQueue, raw_message
from tests.frontend.vring import F_INDIRECT, F_NEXT, F_WRITE
from tests.vm.process import Daemon

GETATTR = fa.request(fa.Op.GETATTR, 7, fa.ROOT_ID, fa.getattr_in())


def _start(
    reference_virtiofsd: Callable[..., Daemon], tree: Path, *extra: str
) -> tuple[Frontend, FuseClient, RawQueue, Daemon]:
    daemon = reference_virtiofsd(tree, extra_args=extra)
    fe = Frontend(str(daemon.socket_path), timeout=2.0).start()
    fs = FuseClient(fe, timeout=2.0)
    fs.init()
    return fe, fs, RawQueue(fe, 1), daemon


def test_descriptor_loop_is_answered_and_queue_survives(
    reference_virtiofsd: Callable[..., Daemon], tree: Path
) -> None:
    fe, fs, rq, _ = _start(reference_virtiofsd, tree)
    try:
        a, b = rq.descs(2)
        out = rq.buffer(120)
        rq.set(a, rq.buffer(GETATTR), len(GETATTR), F_NEXT, b)
        rq.set(b, out, 120, F_WRITE | F_NEXT, b)  # b -> b forever
        rq.submit(a)
        seen = rq.observe(a, out, timeout=2.0)
        assert (seen.outcome, seen.used_len) == (Outcome.REPLIED, 120)
        assert rq.probe(fs) and fe.alive()
    finally:
        fe.close()


@pytest.mark.parametrize("shape", ["writable-first", "lying-in-len", "chain-past-queue-size"])
def test_lenient_shapes_are_answered_by_the_reference(
    reference_virtiofsd: Callable[..., Daemon], tree: Path, shape: str
) -> None:
    fe, fs, rq, _ = _start(reference_virtiofsd, tree)
    try:
        out = rq.buffer(120)
        if shape == "writable-first":
            a, b = rq.descs(2)
            rq.set(a, out, 120, F_WRITE | F_NEXT, b)
            rq.set(b, rq.buffer(GETATTR), len(GETATTR))
        elif shape == "lying-in-len":  # in_header.len claims 4000 bytes, 56 are there
            lie = fa.IN_HEADER.pack(4000, fa.Op.GETATTR, 7, 1, 0, 0, 0, 0, 0) + fa.getattr_in()
            a, b = rq.descs(2)
            rq.set(a, rq.buffer(lie), len(lie), F_NEXT, b)
            rq.set(b, out, 120, F_WRITE)
        else:  # every free descriptor chained in a cycle: longer than the queue
            ds = rq.descs(len(rq.ring.free) - 4)
            a = ds[0]
            rq.set(a, rq.buffer(GETATTR), len(GETATTR), F_NEXT, ds[1])
            for k in range(1, len(ds)):
                rq.set(ds[k], out + (k - 1) % 120, 1, F_WRITE | F_NEXT, ds[(k + 1) % len(ds)])
        rq.submit(a)
        seen = rq.observe(a, out, timeout=2.0)
        assert seen.outcome is Outcome.REPLIED and seen.used_len == 120, seen
        assert fa.out_header(fe.mem.read(out, 16)).unique == 7
        assert rq.probe(fs) and fe.alive()
    finally:
        fe.close()


@pytest.mark.parametrize("seccomp", ["kill", "none"])
def test_out_of_range_head_kills_or_breaks_the_reference(
    reference_virtiofsd: Callable[..., Daemon], tree: Path, seccomp: str
) -> None:
    fe, fs, rq, daemon = _start(reference_virtiofsd, tree, f"--seccomp={seccomp}")
    try:
        rq.submit(fe.queues[1].ring.size + 5)  # a head index past the descriptor table
        seen = rq.observe(fe.queues[1].ring.size + 5, None, timeout=0.5)
        if seccomp == "kill":
            # virtiofsd's worker panics; the panic path trips its seccomp filter: SIGSYS.
            assert seen.outcome is Outcome.DIED
            assert daemon.proc.wait(5) == -signal.SIGSYS
        else:
            assert seen.outcome is Outcome.NO_REPLY  # the worker thread died, the socket lives
            assert not rq.probe(fs, timeout=0.5)
            assert fe.alive()
    finally:
        fe.close()


@pytest.mark.parametrize("shape", ["nested-indirect", "oversize-indirect", "outside-memory"])
def test_malformed_chains_break_the_reference_queue(
    reference_virtiofsd: Callable[..., Daemon], tree: Path, shape: str
) -> None:
    fe, fs, rq, _ = _start(reference_virtiofsd, tree, "--seccomp=none")
    try:
        inp, out = rq.buffer(GETATTR), rq.buffer(120)
        [head] = rq.descs(1)
        if shape == "outside-memory":
            [nxt] = rq.descs(1)
            rq.set(head, inp, len(GETATTR), F_NEXT, nxt)
            rq.set(nxt, 1 << 40, 120, F_WRITE)
        else:
            table = rq.table([(inp, len(GETATTR), F_NEXT, 1), (out, 120, F_WRITE, 0)])
            if shape == "nested-indirect":
                table, size = rq.table([(table, 32, F_INDIRECT, 0)]), 16
            else:
                size = 16 * 100_000
            rq.set(head, table, size, F_INDIRECT)
        rq.submit(head)
        assert rq.observe(head, out, timeout=0.5).outcome is Outcome.NO_REPLY
        assert not rq.probe(fs, timeout=0.5)
    finally:
        fe.close()


def test_unknown_vhost_request_makes_the_reference_hang_up(
    reference_virtiofsd: Callable[..., Daemon], tree: Path
) -> None:
    fe, _, _, daemon = _start(reference_virtiofsd, tree)
    try:
        res = raw_message(fe, 999, b"\0" * 8, flags=0x9, timeout=2.0)  # NEED_REPLY
        assert not res.replied and not res.alive
        daemon.proc.wait(5)
        assert "InvalidMessage" in daemon.log()
    finally:
        fe.close()


def test_raw_message_sees_a_valid_reply(
    reference_virtiofsd: Callable[..., Daemon], tree: Path
) -> None:
    fe, _, _, _ = _start(reference_virtiofsd, tree)
    try:
        res = raw_message(fe, 1, flags=0x1)  # GET_FEATURES
        assert res.replied and res.alive and (res.request, res.flags) == (1, 0x5)
        assert len(res.payload) == 8
    finally:
        fe.close()
