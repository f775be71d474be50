"""Fixtures: one converted image, our daemon serving it (with and without a thread
pool), and a fresh front-end + FUSE client per test. A failing test shows the daemon's log."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import rig
from tests.daemon.source import make_source
from tests.frontend.client import FuseClient
from tests.frontend.frontend import Frontend
from tests.vm.process import Daemon, running_daemon, short_tmpdir
from tests.vm.reference import READY_TEXT


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for d in rig.RECENT:
            state = "running" if d.proc.poll() is None else f"exit {d.proc.returncode}"
            report.sections.append((f"daemon log ({state}) {d.socket_path}", d.log()[-8000:]))
    return report


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_source(tmp_path_factory.mktemp("daemon-src") / "root")


@pytest.fixture(scope="session")
def image(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rig.convert(f"dir:{source}", tmp_path_factory.mktemp("daemon-img") / "img")


@pytest.fixture(scope="session")
def sock_dir() -> Iterator[Path]:
    d = short_tmpdir("vnd-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def start_daemon(sock_dir: Path, image: Path) -> Iterator[DaemonFactory]:
    """Factory: start_daemon(*extra_args, image=True) -> a ready Daemon, stopped at teardown."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(*extra: str, serve_image: bool = True) -> Daemon:
            nonlocal count
            count += 1
            sock = sock_dir / f"f{id(stack) % 10000}-{count}.sock"
            if not serve_image:  # EXTRA names what to serve
                argv = [*rig.DAEMON_ARGV, "--socket-path", str(sock), *extra]
                daemon = stack.enter_context(running_daemon(argv, sock, READY_TEXT))
                rig.RECENT.append(daemon)
                return daemon
            return stack.enter_context(
                rig.our_daemon(sock, image=image, cache_dir=sock_dir / "cache", extra_args=extra)
            )

        yield start


@pytest.fixture(scope="module", params=[0, 2], ids=["inline", "pool2"])
def served(request: pytest.FixtureRequest, sock_dir: Path, image: Path) -> Iterator[Daemon]:
    """One --reconnect daemon per module and thread-pool size; each test connects anew."""
    pool = int(request.param)
    sock = sock_dir / f"m{pool}-{request.module.__name__.rsplit('.', 1)[-1][:12]}.sock"
    args = ["--reconnect", "--thread-pool-size", str(pool), "--num-request-queues", "4"]
    with rig.our_daemon(sock, image=image, cache_dir=sock_dir / "cache", extra_args=args) as daemon:
        yield daemon


@pytest.fixture
def connect(served: Daemon) -> Iterator[Callable[..., Frontend]]:
    """Factory: a started Frontend on the module's daemon; closed (and the daemon checked
    alive) at teardown."""
    opened: list[Frontend] = []

    def make(**opts: Any) -> Frontend:
        opts.setdefault("timeout", 5.0)
        fe = Frontend(str(served.socket_path), **opts).start()
        opened.append(fe)
        return fe

    yield make
    for fe in opened:
        fe.close()
    assert served.proc.poll() is None, f"daemon exited with {served.proc.returncode}"


@pytest.fixture
def fs(connect: Callable[..., Frontend]) -> FuseClient:
    client = FuseClient(connect())
    client.init()
    return client
