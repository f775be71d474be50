"""Guest-side and reference assets: the reference virtiofsd (Debian 13's, run on Debian 12).

Each asset is built once and cached (cache.py); later calls only look at the cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.vm.apt import PrivateApt, extract
from tests.vm.cache import cache_dir, cached

# Debian 13 ships virtiofsd 1.13; its binary needs trixie's glibc, so it runs through
# trixie's own loader with trixie's libraries.
_VIRTIOFSD_SUITE = "trixie"
_VIRTIOFSD_PACKAGES = ["virtiofsd", "libc6", "libseccomp2", "libcap-ng0", "libgcc-s1"]
_LIBDIR = "usr/lib/x86_64-linux-gnu"
_LOADER = "usr/lib64/ld-linux-x86-64.so.2"


def _find_cached(prefix: str) -> Path | None:
    """The newest complete cache entry named PREFIX-<version>, if any (no network needed)."""
    found = sorted(p for p in cache_dir().glob(f"{prefix}-*") if p.is_dir())
    return found[-1] if found else None


def virtiofsd_root() -> Path:
    """The directory holding trixie's virtiofsd with its loader and libraries."""
    hit = _find_cached("virtiofsd")
    if hit is not None:
        return hit
    apt = PrivateApt(_VIRTIOFSD_SUITE)
    version = apt.version("virtiofsd")

    def build(tmp: Path) -> None:
        debs = apt.download(_VIRTIOFSD_PACKAGES, tmp / "debs")
        for deb in debs:
            extract(deb, tmp / "root")
        shutil.rmtree(tmp / "debs")
        for rel in (_LOADER, "usr/libexec/virtiofsd", _LIBDIR + "/libc.so.6"):
            if not (tmp / "root" / rel).exists():
                raise RuntimeError(f"virtiofsd {version}: {rel} missing from the packages")
        (tmp / "VERSION").write_text(version + "\n")

    return cached(f"virtiofsd-{version}", build)


def virtiofsd_cmd() -> list[str]:
    """argv prefix running the reference virtiofsd; append its own options."""
    root = virtiofsd_root() / "root"
    return [
        str(root / _LOADER),
        "--library-path",
        str(root / _LIBDIR),
        str(root / "usr/libexec/virtiofsd"),
    ]


def virtiofsd_version() -> str:
    return (virtiofsd_root() / "VERSION").read_text().strip()
