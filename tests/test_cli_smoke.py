"""The console scripts exist, answer --help/--version, and never pretend to work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from virtiofsd_nydus import __version__


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("module", ["virtiofsd_nydus.daemon.cli", "virtiofsd_nydus.convert.cli"])
def test_help_and_version(module: str) -> None:
    r = _run(module, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout
    r = _run(module, "--version")
    assert r.returncode == 0 and __version__ in r.stdout


def test_native_core_loads() -> None:
    from virtiofsd_nydus._native import ABI_VERSION, lib

    assert lib.vn_abi_version() == ABI_VERSION
