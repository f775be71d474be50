"""Download Debian packages of any suite without touching the system's apt configuration.

A private sources list names the wanted suite of the archive the system already uses; apt
runs with its own lists and cache directories (all under our cache), so `apt-get update`
here never changes what the machine's own apt sees.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.vm.cache import cache_dir, cached, locked

_DEFAULT_MIRROR = "http://deb.debian.org/debian"
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def debian_mirror() -> str:
    """The main archive URI the system's apt uses (deb822 file first, then sources.list)."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for stanza in deb822.read_text().split("\n\n"):
            fields = dict(
                (k.strip(), v.strip())
                for k, _, v in (ln.partition(":") for ln in stanza.splitlines())
                if not k.startswith("#") and v
            )
            suites = fields.get("Suites", "").split()
            if any(s in ("bookworm", "stable") for s in suites) and fields.get("URIs"):
                return fields["URIs"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(bookworm|stable)\s", line)
            if m:
                return m.group(1)
    return _DEFAULT_MIRROR


class PrivateApt:
    """apt-get bound to one suite of the system's mirror, with state kept under our cache."""

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self.root = cache_dir() / f"apt-{suite}"

    def _opts(self) -> list[str]:
        r = self.root
        return [
            f"-oDir::Etc::SourceList={r / 'sources.list'}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={r / 'lists'}",
            f"-oDir::Cache={r / 'cache'}",
            # the _apt sandbox user cannot write into root's home directory
            "-oAPT::Sandbox::User=root",
            "-oDebug::NoLocking=true",
            "-q",
        ]

    def _update(self) -> None:
        with locked(f"apt-{self.suite}"):
            if (self.root / ".updated").exists():
                return
            (self.root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
            (self.root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
            signed = f" [signed-by={_KEYRING}]" if Path(_KEYRING).exists() else ""
            (self.root / "sources.list").write_text(
                f"deb{signed} {debian_mirror()} {self.suite} main\n"
            )
            _run(["apt-get", *self._opts(), "update"], cwd=None)
            (self.root / ".updated").touch()

    def version(self, package: str) -> str:
        """The candidate version of PACKAGE in this suite."""
        self._update()
        out = _run(["apt-cache", *self._opts(), "show", "--no-all-versions", package], cwd=None)
        m = re.search(r"^Version:\s*(\S+)", out, re.M)
        if not m:
            raise RuntimeError(f"apt-cache show {package} ({self.suite}): no Version field")
        return m.group(1)

    def depends(self, package: str) -> list[str]:
        """PACKAGE's direct Depends (first alternative of each, version constraints dropped)."""
        self._update()
        out = _run(["apt-cache", *self._opts(), "show", "--no-all-versions", package], cwd=None)
        m = re.search(r"^Depends:\s*(.*)$", out, re.M)
        if not m:
            return []
        return [d.split("|")[0].split("(")[0].split(":")[0].strip() for d in m.group(1).split(",")]

    def download(self, packages: list[str], into: Path) -> list[Path]:
        """Download the .deb files of PACKAGES into INTO; returns their paths."""
        self._update()
        into.mkdir(parents=True, exist_ok=True)
        try:
            _run(["apt-get", *self._opts(), "download", *packages], cwd=into)
        except RuntimeError:
            # lists cached by an earlier run may name versions the mirror has since dropped
            (self.root / ".updated").unlink(missing_ok=True)
            self._update()
            _run(["apt-get", *self._opts(), "download", *packages], cwd=into)
        debs = sorted(into.glob("*.deb"))
        if len(debs) < len(packages):
            raise RuntimeError(f"apt-get download {packages}: got only {[d.name for d in debs]}")
        return debs


def extract(deb: Path, into: Path) -> None:
    """Unpack a .deb's data (no maintainer scripts run)."""
    _run(["dpkg-deb", "-x", str(deb), str(into)], cwd=None)


def _run(argv: list[str], cwd: Path | None) -> str:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(argv[:2])} ... failed ({r.returncode}): {' | '.join(tail)}")
    return r.stdout


__all__ = ["PrivateApt", "cached", "debian_mirror", "extract"]
