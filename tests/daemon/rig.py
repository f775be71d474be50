"""Our daemon as a real subprocess: build an image with ``vnydus convert``, start
``virtiofsd-nydus`` on it, wait for its ready line, always stop it.

Used by tests/daemon and the benchmarks; other test areas may import it too.
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.vm.process import Daemon, running_daemon
from virtiofsd_nydus.daemon.service import WAITING_LINE

DAEMON_ARGV = (sys.executable, "-m", "virtiofsd_nydus.daemon.cli")
CONVERT_ARGV = (sys.executable, "-m", "virtiofsd_nydus.convert.cli", "convert", "--no-progress")
READY_TEXT = WAITING_LINE

# The daemons most recently started: a failing test shows their logs (conftest hook).
RECENT: collections.deque[Daemon] = collections.deque(maxlen=4)


class ConvertError(RuntimeError):
    """``vnydus convert`` failed."""


def convert(source: str, out: Path, *, chunk_size: int = 64 << 10) -> Path:
    """``vnydus convert SOURCE OUT`` (e.g. ``dir:/path``); returns OUT."""
    argv = [*CONVERT_ARGV, "--chunk-size", str(chunk_size), source, str(out)]
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise ConvertError(f"vnydus convert {source} failed: {res.stderr.strip()}")
    return out


def image_args(image: Path, cache_dir: Path) -> list[str]:
    return ["--image", str(image), "--cache-dir", str(cache_dir)]


@contextlib.contextmanager
def our_daemon(
    socket_path: Path, args: Sequence[str], *, timeout: float = 30.0
) -> Iterator[Daemon]:
    """``virtiofsd-nydus --socket-path SOCKET_PATH ARGS...``, ready for a front-end."""
    argv = [*DAEMON_ARGV, "--socket-path", str(socket_path), *args]
    with running_daemon(argv, socket_path, READY_TEXT, timeout=timeout) as daemon:
        RECENT.append(daemon)
        yield daemon


def rss_kib(pid: int) -> int:
    """VmRSS of PID in KiB (from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")
