"""Every named workload runs briefly against the reference virtiofsd and counts its ops."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.frontend import fuse_abi as fa
from tests.frontend.__main__ import main
from tests.frontend.client import FuseClient
from tests.frontend.conftest import FrontendFactory
from tests.frontend.pipeline import Pipeline, run
from tests.frontend.workloads import WORKLOADS, run_workload
from tests.vm.process import Daemon, running_daemon

PATHS = {"seqread128k": "/big.bin", "randread4k": "/big.bin", "readdirplus": "/dir"}


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_runs(reference_virtiofsd: Callable[..., Daemon], tree: Path, name: str) -> None:
    daemon = reference_virtiofsd(tree)
    res = run_workload(
        str(daemon.socket_path),
        name,
        path=PATHS.get(name, "/"),
        seconds=0.3,
        warmup=0,
        queue_depth=16,
    )
    assert res.ops > 0 and res.p99_us >= res.p50_us > 0
    if name.endswith(("4k", "128k")):
        assert res.bytes == res.ops * (4096 if name == "randread4k" else 128 << 10)
    assert daemon.proc.wait(5) == 0  # a clean stop and hang-up: virtiofsd exits happily


@pytest.mark.parametrize(
    "opts",
    [
        {"indirect": True},
        {"event_idx": False},
        {"queue_size": 64, "queue_depth": 48},
        {"poll": True},
    ],
)
def test_pipeline_transport_variants(
    reference_virtiofsd: Callable[..., Daemon], tree: Path, opts: dict[str, Any]
) -> None:
    daemon = reference_virtiofsd(tree)
    args: dict[str, Any] = {"queue_depth": 16, **opts}
    res = run_workload(
        str(daemon.socket_path), "randread4k", path="/big.bin", seconds=0.3, warmup=0, **args
    )
    assert res.ops > 0 and res.queue_depth == min(args["queue_depth"], 24)


def test_cli_prints_json(
    reference_virtiofsd: Callable[..., Daemon], tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = reference_virtiofsd(tree)
    argv = [
        "--socket",
        str(daemon.socket_path),
        "--workload",
        "getattr",
        "--seconds",
        "0.2",
        "--warmup",
        "0",
        "--queue-depth",
        "8",
        "--queues",
        "4",
        "--json",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert '"workload": "getattr"' in out and '"queues": 1' in out  # virtiofsd has one


def test_cli_reports_a_missing_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            ["--socket", str(tmp_path / "none"), "--workload", "lookup", "--connect-timeout", "0.1"]
        )
        == 1
    )
    assert "error:" in capsys.readouterr().err


def test_pipeline_raises_on_error_replies(frontend_on: FrontendFactory) -> None:
    fe, _ = frontend_on()
    fs = FuseClient(fe)
    fs.init()
    node = fs.lookup(fa.ROOT_ID, b"big.bin").nodeid
    bad_fh = fa.request(fa.Op.READ, 0, node, fa.read_in(0xDEAD, 0, 4096))
    pipe = Pipeline(fe, 1, 8, bad_fh, 4096, expect_len=16 + 4096)
    with pytest.raises(OSError) as e:
        run(fe, [pipe], seconds=1.0)
    assert e.value.errno == errno.EBADF


@pytest.mark.parametrize("identity", [True, False])
def test_pipeline_reads_correct_data(
    frontend_on: FrontendFactory, tree: Path, identity: bool
) -> None:
    fe, _ = frontend_on()
    fs = FuseClient(fe)
    fs.init()
    node = fs.lookup(fa.ROOT_ID, b"big.bin").nodeid
    fh = fs.open(node).fh
    held = [] if identity else fe.queues[1].ring.take(1)  # descriptor 0 busy: mapped heads
    tmpl = fa.request(fa.Op.READ, 0, node, fa.read_in(fh, 8192, 4096))
    pipe = Pipeline(fe, 1, 8, tmpl, 4096, expect_len=16 + 4096)
    assert pipe.identity is identity and held is not None
    stats = run(fe, [pipe], seconds=0.2)
    assert stats.completed > 0
    want = (tree / "big.bin").read_bytes()[8192 : 8192 + 4096]
    for s in range(8):
        assert fe.mem.read(pipe.slots[s].out_gpa + 16, 4096) == want


def test_run_drives_two_queues_at_once(frontend_on: FrontendFactory) -> None:
    # virtiofsd has one request queue, but it serves any opcode on hiprio too: enough to
    # exercise run() over several queues (wake-ups on either call eventfd, per-queue reaping).
    fe, _ = frontend_on()
    fs = FuseClient(fe)
    fs.init()
    tmpl = fa.request(fa.Op.GETATTR, 0, fa.ROOT_ID, fa.getattr_in())
    pipes = [Pipeline(fe, q, 16, tmpl, 104, expect_len=16 + 104) for q in (0, 1)]
    stats = run(fe, pipes, seconds=0.3)
    assert all(p.completed > 16 and p.inflight == 0 for p in pipes)
    assert stats.completed <= sum(p.completed for p in pipes)


def test_two_request_queues_on_our_daemon(tree: Path, short_tmp: Path) -> None:
    # virtiofsd has a single request queue; our daemon takes --num-request-queues.
    sock = short_tmp / "ours.sock"
    argv = [sys.executable, "-m", "virtiofsd_nydus.daemon.cli", "--socket-path", str(sock)]
    argv += ["--shared-dir", str(tree), "--readonly", "--num-request-queues", "2"]
    with running_daemon(argv, sock, "Waiting for vhost-user socket connection"):
        res = run_workload(str(sock), "getattr", seconds=0.3, warmup=0, queues=2, queue_depth=8)
    assert res.queues == 2 and res.ops > 0
