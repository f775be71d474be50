"""Our daemon as a real subprocess: build an image with ``vnydus convert``, start
``virtiofsd-nydus`` on it, wait for its ready line, always stop it.

Starting it is tests/vm/ours.py's job (shared with tests/e2e); this adds image building,
a memory of recent daemons for failure reports, and raw argv for odd command lines.
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.vm.ours import our_virtiofsd
from tests.vm.process import Daemon

DAEMON_ARGV = (sys.executable, "-m", "virtiofsd_nydus.daemon.cli")
CONVERT_ARGV = (sys.executable, "-m", "virtiofsd_nydus.convert.cli", "convert", "--no-progress")

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


@contextlib.contextmanager
def our_daemon(
    socket_path: Path,
    *,
    image: Path | None = None,
    shared_dir: Path | None = None,
    cache_dir: Path | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[Daemon]:
    """tests.vm.ours.our_virtiofsd, remembered in RECENT for failure reports."""
    with our_virtiofsd(
        socket_path,
        image=image,
        shared_dir=shared_dir,
        cache_dir=cache_dir,
        extra_args=extra_args,
    ) as daemon:
        RECENT.append(daemon)
        yield daemon


def rss_kib(pid: int) -> int:
    """VmRSS of PID in KiB (from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")
