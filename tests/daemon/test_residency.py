"""The daemon's bootstrap RSS budget: over budget, a check trims the mapping; under it,
nothing happens. Memory facts from /proc/self/smaps, no timings."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.format.test_trim import mapping_rss_kb, touch_every_page, write_big_bootstrap
from virtiofsd_nydus.daemon.residency import ResidentBudget
from virtiofsd_nydus.daemon.virtiofs import VirtioFsDevice
from virtiofsd_nydus.format.reader import Bootstrap
from virtiofsd_nydus.fuse.fastpath import FastPath
from virtiofsd_nydus.fuse.imagefs import ImageFS
from virtiofsd_nydus.fuse.server import Server

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/statm, smaps")


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_big_bootstrap(tmp_path_factory.mktemp("budget") / "image.boot")


def test_over_budget_a_check_trims_the_mapping(boot: Path) -> None:
    with Bootstrap.open(boot) as bs:
        budget = ResidentBudget(bs, 1 << 20)
        try:
            assert mapping_rss_kb(boot) == 0  # it starts from a trim
            touch_every_page(bs)
            assert mapping_rss_kb(boot) * 1024 > 4 << 20
            trims = budget.trims
            assert budget.check()
            assert budget.trims == trims + 1
            assert mapping_rss_kb(boot) == 0
            assert not budget.check()  # nothing grew since
        finally:
            budget.close()
        assert not budget.check()  # closed: a no-op


def test_under_budget_nothing_is_trimmed(boot: Path) -> None:
    with Bootstrap.open(boot) as bs:
        budget = ResidentBudget(bs, 1 << 30)
        try:
            touch_every_page(bs)
            before = mapping_rss_kb(boot)
            assert not budget.check()
            assert mapping_rss_kb(boot) == before > 0
        finally:
            budget.close()


def test_no_budget_for_a_copy_or_a_zero_budget(boot: Path) -> None:
    assert ResidentBudget.for_bootstrap(Bootstrap.from_bytes(boot.read_bytes()), 1 << 20) is None
    with Bootstrap.open(boot) as bs:
        assert ResidentBudget.for_bootstrap(bs, None) is None
        assert ResidentBudget.for_bootstrap(bs, 0) is None


def test_the_device_checks_after_each_fast_drain(boot: Path) -> None:
    with Bootstrap.open(boot) as bs:
        server = Server(ImageFS(bs, chunks=None))  # type: ignore[arg-type]  # no reads here
        fp = FastPath(server, server.fs)  # type: ignore[arg-type]
        dev = VirtioFsDevice(server, fastpath=fp, bootstrap_budget=1 << 20)
        try:
            assert dev.budget is not None
            queue: Any = SimpleNamespace(index=1, fast_drain=None)
            dev.queue_started(queue)
            calls: list[tuple[Any, ...]] = []
            fp.drain = lambda *a: calls.append(a) or 0  # type: ignore[method-assign]
            touch_every_page(bs)
            checks = dev.budget.checks
            assert queue.fast_drain.drain("vq", "chains", 64, "iovs", 130, -1) == 0
            assert calls == [("vq", "chains", 64, "iovs", 130, -1)]
            assert dev.budget.checks == checks + 1
            assert mapping_rss_kb(boot) == 0
        finally:
            dev.close()
        off = VirtioFsDevice(Server(ImageFS(bs, chunks=None)), bootstrap_budget=None)  # type: ignore[arg-type]
        assert off.budget is None
        off.close()


def test_the_budget_is_a_daemon_flag() -> None:
    from virtiofsd_nydus.daemon import cli

    base = ["--socket-path", "/tmp/x.sock", "--shared-dir", "/tmp"]

    def budget(*extra: str) -> int | None:
        return cli.options(cli.build_parser().parse_args([*base, *extra])).bootstrap_budget

    assert budget() == 32 << 20
    assert budget("--bootstrap-rss-budget", "64") == 64 << 20
    assert budget("--bootstrap-rss-budget", "0") is None
