"""Start a back-end daemon, wait until it says it is ready, and always stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


class DaemonStartError(RuntimeError):
    """The daemon exited or stayed silent instead of announcing that it is ready."""


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket_path: Path
    log_path: Path

    def log(self) -> str:
        """Everything the daemon wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace")


def short_tmpdir(prefix: str = "vn-") -> Path:
    """A private directory with a short path: unix socket paths are limited to 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@contextlib.contextmanager
def running_daemon(
    argv: Sequence[str],
    socket_path: Path,
    ready_text: str,
    *,
    log_path: Path | None = None,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> Iterator[Daemon]:
    """Run ARGV (stdout+stderr to a log file) until READY_TEXT appears in its log.

    The daemon runs in its own process group; at exit it gets SIGTERM, then SIGKILL.
    """
    if log_path is None:
        log_path = socket_path.with_name(socket_path.name + ".log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    daemon = Daemon(proc, socket_path, log_path)
    try:
        deadline = time.monotonic() + timeout
        while ready_text not in daemon.log():
            if proc.poll() is not None:
                raise DaemonStartError(
                    f"{Path(argv[-1]).name if argv else '?'} exited with {proc.returncode} "
                    f"before it was ready: {_tail(daemon.log())}"
                )
            if time.monotonic() > deadline:
                raise DaemonStartError(
                    f"no {ready_text!r} within {timeout:.0f}s: {_tail(daemon.log())}"
                )
            time.sleep(0.05)
        yield daemon
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers, then reap the leader.

    The group is only signalled while its leader is unreaped, so its id cannot have been
    reused by someone else's processes.
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
