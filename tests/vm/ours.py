"""Our back-end, virtiofsd-nydus, started like the reference one (reference.py)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tests.vm.process import Daemon, running_daemon
from tests.vm.reference import READY_TEXT

# the type of the conftest fixture: factory(image=..., cache_dir=..., ...) -> Daemon
OursFactory = Callable[..., Daemon]


def ours_argv(
    socket_path: Path,
    *,
    image: Path | None = None,
    shared_dir: Path | None = None,
    cache_dir: Path | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """virtiofsd-nydus's command line, run with this interpreter (no install needed)."""
    if (image is None) == (shared_dir is None):
        raise ValueError("give exactly one of image and shared_dir")
    argv = [sys.executable, "-m", "virtiofsd_nydus.daemon.cli", "--socket-path", str(socket_path)]
    if image is not None:
        argv += ["--image", str(image)]
    else:
        argv += ["--shared-dir", str(shared_dir)]
    if cache_dir is not None:
        argv += ["--cache-dir", str(cache_dir)]
    return argv + list(extra_args)


@contextlib.contextmanager
def our_virtiofsd(
    socket_path: Path,
    *,
    image: Path | None = None,
    shared_dir: Path | None = None,
    cache_dir: Path | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[Daemon]:
    """virtiofsd-nydus serving IMAGE (or SHARED_DIR), ready to connect; stopped at exit.

    Like virtiofsd it serves one front-end and exits when it disconnects: one per guest.
    """
    argv = ours_argv(
        socket_path, image=image, shared_dir=shared_dir, cache_dir=cache_dir, extra_args=extra_args
    )
    with running_daemon(argv, socket_path, READY_TEXT) as daemon:
        yield daemon
