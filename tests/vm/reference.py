"""The reference back-end: Debian 13's virtiofsd serving a host directory."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tests.vm.assets import virtiofsd_cmd
from tests.vm.process import Daemon, running_daemon

READY_TEXT = "Waiting for vhost-user socket connection"

# the type of the conftest fixture: factory(shared_dir, *, readonly=True, extra_args=()) -> Daemon
ReferenceFactory = Callable[..., Daemon]


@contextlib.contextmanager
def reference_virtiofsd(
    shared_dir: Path,
    socket_path: Path,
    *,
    readonly: bool = True,
    extra_args: Sequence[str] = (),
) -> Iterator[Daemon]:
    """virtiofsd --socket-path S --shared-dir D --sandbox=none [--readonly], ready to connect."""
    argv = [
        *virtiofsd_cmd(),
        f"--socket-path={socket_path}",
        f"--shared-dir={shared_dir}",
        "--sandbox=none",
        *(["--readonly"] if readonly else []),
        *extra_args,
    ]
    with running_daemon(argv, socket_path, READY_TEXT) as daemon:
        yield daemon
