"""Fixtures shared by every test area: short temp dirs, the reference virtiofsd and ours."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

import pytest
from _pytest.nodes import Item
from _pytest.reports import TestReport
from _pytest.runner import CallInfo

from tests.vm.ours import OursFactory, our_virtiofsd
from tests.vm.process import Daemon, short_tmpdir
from tests.vm.reference import ReferenceFactory
from tests.vm.reference import reference_virtiofsd as _reference_virtiofsd


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A fresh directory under /tmp with a short path (room for unix socket names)."""
    d = short_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def reference_virtiofsd(short_tmp: Path) -> Iterator[ReferenceFactory]:
    """Factory: reference_virtiofsd(shared_dir, readonly=True, extra_args=()) -> Daemon.

    Starts Debian 13's virtiofsd on a fresh socket, returns once it waits for a front-end
    (daemon.socket_path), and kills it at teardown. virtiofsd serves one front-end connection
    and exits when it closes: start one daemon per guest.
    """
    with contextlib.ExitStack() as stack:
        count = 0

        def start(
            shared_dir: Path, *, readonly: bool = True, extra_args: Sequence[str] = ()
        ) -> Daemon:
            nonlocal count
            count += 1
            sock = short_tmp / f"vfsd{count}.sock"
            return stack.enter_context(
                _reference_virtiofsd(shared_dir, sock, readonly=readonly, extra_args=extra_args)
            )

        yield start


_DAEMONS = pytest.StashKey[list[Daemon]]()


@pytest.fixture
def vnydus_daemon(short_tmp: Path, request: pytest.FixtureRequest) -> Iterator[OursFactory]:
    """Factory: vnydus_daemon(image=DIR | shared_dir=DIR, cache_dir=None, extra_args=()).

    Starts virtiofsd-nydus on a fresh socket, returns the Daemon once it waits for a
    front-end, and stops it at teardown. Its log is attached to the test's failure report.
    One daemon per guest, as with virtiofsd.
    """
    started = request.node.stash.setdefault(_DAEMONS, [])
    with contextlib.ExitStack() as stack:

        def start(**kwargs: object) -> Daemon:
            sock = short_tmp / f"ours{len(started) + 1}.sock"
            daemon = stack.enter_context(our_virtiofsd(sock, **kwargs))  # type: ignore[arg-type]
            started.append(daemon)
            return daemon

        yield start


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: Item, call: CallInfo[None]
) -> Generator[None, TestReport, TestReport]:
    """A failing test that started our daemon shows each daemon's log."""
    report = yield
    if report.when == "call" and report.failed and _DAEMONS in item.stash:
        daemons: list[Daemon] = item.stash[_DAEMONS]
        for i, daemon in enumerate(daemons, 1):
            report.sections.append((f"virtiofsd-nydus #{i} log", daemon.log()[-8000:]))
    return report
