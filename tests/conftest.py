"""Fixtures shared by every test area: short temp dirs and the reference virtiofsd."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

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
