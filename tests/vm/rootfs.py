"""A Debian 12 root file system (minbase + python3) for guests booted with rootfs=True."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.vm.apt import debian_mirror
from tests.vm.cache import cached

_SUITE = "bookworm"
_INCLUDE = ("python3",)
# bump when the recipe changes: the name is the cache key
_RECIPE = f"debian-{_SUITE}-minbase-{'-'.join(_INCLUDE)}-v1"


def debian_rootfs() -> Path:
    """The cached rootfs directory, built with debootstrap on first use (needs root)."""

    def build(tmp: Path) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("building the Debian rootfs needs root (debootstrap)")
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(_INCLUDE)}",
            _SUITE,
            str(tmp),
            debian_mirror(),
        ]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            log = tmp / "debootstrap" / "debootstrap.log"
            detail = log.read_text()[-2000:] if log.exists() else r.stderr[-2000:]
            raise RuntimeError(f"debootstrap failed ({r.returncode}): {detail}")
        # the downloaded .debs are half its size and no guest needs them
        for deb in (tmp / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        shutil.rmtree(tmp / "var/lib/apt/lists", ignore_errors=True)
        (tmp / "var/lib/apt/lists").mkdir()

    return cached(_RECIPE, build)
