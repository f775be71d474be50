"""Fixtures: a served host tree with known content, and front-ends on the reference virtiofsd."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.frontend.client import FuseClient
from tests.frontend.frontend import Frontend
from tests.vm.process import Daemon

BIG_SIZE = 4 << 20


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hello.txt, big.bin (4 MiB random), dir/ with 40 entries of every common kind."""
    root = tmp_path_factory.mktemp("served")
    (root / "hello.txt").write_bytes(b"hello, virtio-fs\n" * 300)
    with contextlib.suppress(OSError):  # where the host fs has user xattrs
        os.setxattr(root / "hello.txt", "user.greeting", b"hi there")
    (root / "big.bin").write_bytes(random.Random(7).randbytes(BIG_SIZE))
    d = root / "dir"
    d.mkdir()
    for i in range(36):
        (d / f"file-{i:03d}").write_bytes(b"x" * i)
    (d / "sub").mkdir()
    (d / "link").symlink_to("file-001")
    (d / "empty").touch()
    os.mkfifo(d / "fifo")
    return root


FrontendFactory = Callable[..., tuple[Frontend, Daemon]]


@pytest.fixture
def frontend_on(
    reference_virtiofsd: Callable[..., Daemon], tree: Path
) -> Iterator[FrontendFactory]:
    """Factory: a started Frontend (options as keyword args) on a fresh reference virtiofsd."""
    with contextlib.ExitStack() as stack:

        def make(extra_args: tuple[str, ...] = (), **opts: Any) -> tuple[Frontend, Daemon]:
            daemon = reference_virtiofsd(tree, readonly=True, extra_args=extra_args)
            fe = Frontend(str(daemon.socket_path), **opts).start()
            stack.callback(fe.close)
            return fe, daemon

        yield make


@pytest.fixture
def fs(frontend_on: FrontendFactory) -> FuseClient:
    """An initialised FUSE client on default settings (EVENT_IDX, SET_MEM_TABLE)."""
    fe, _ = frontend_on()
    client = FuseClient(fe)
    client.init()
    return client
