"""A per-user cache of built assets: built once under a lock, published by an atomic rename."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def cache_dir() -> Path:
    """~/.cache/virtiofsd-nydus (or $VNYDUS_CACHE), created on demand."""
    override = os.environ.get("VNYDUS_CACHE")
    if override:
        root = Path(override)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "virtiofsd-nydus"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Hold an exclusive flock on cache_dir()/.NAME.lock: parallel pytest workers queue here."""
    with open(cache_dir() / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached(name: str, build: Callable[[Path], None]) -> Path:
    """Return cache_dir()/NAME, calling build(tmpdir) to make it when it is missing.

    build fills an empty temporary directory next to the target; the directory is renamed
    into place only when build returns, so an interrupted build leaves nothing half-made.
    """
    target = cache_dir() / name
    if target.is_dir():
        return target
    with locked(name):
        if target.is_dir():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir()))
        try:
            build(tmp)
            tmp.chmod(0o755)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
