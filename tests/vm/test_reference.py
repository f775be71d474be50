"""The rig itself, proven against the reference virtiofsd: what the guest reads over
virtio-fs is what the host has, byte for byte, and a hung guest is killed with its console."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.vm.guest import GuestSetupFailed, GuestTimeout, run_guest
from tests.vm.reference import ReferenceFactory
from tests.vm.rootfs import debian_rootfs

pytestmark = pytest.mark.vm

_BIG = 64 << 20
# name|type|size|mode|links for every path below ".", in byte order
_STAT_FMT = "%n|%F|%s|%a|%h"


def _make_tree(root: Path) -> None:
    (root / "big.bin").write_bytes(os.urandom(_BIG))
    (root / "small.txt").write_text("hello from the host\n")
    (root / "empty").write_bytes(b"")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "odd.bin").write_bytes(os.urandom(4097))
    (root / "sub" / "mode600").write_bytes(b"x" * 3)
    (root / "sub" / "mode600").chmod(0o600)
    (root / "link").symlink_to("sub/deeper/odd.bin")


def _host_listing(root: Path) -> str:
    paths = sorted(["."] + [f"./{p.relative_to(root)}" for p in root.rglob("*")], key=os.fsencode)
    r = subprocess.run(
        ["stat", "-c", _STAT_FMT, *paths], cwd=root, capture_output=True, text=True, check=True
    )
    return r.stdout


def _host_sums(root: Path, names: list[str]) -> str:
    return "".join(f"{hashlib.sha256((root / n).read_bytes()).hexdigest()}  {n}\n" for n in names)


def test_guest_reads_what_the_host_has(
    reference_virtiofsd: ReferenceFactory, tmp_path: Path
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    _make_tree(share)
    files = ["big.bin", "small.txt", "empty", "sub/deeper/odd.bin", "sub/mode600", "link"]
    daemon = reference_virtiofsd(share, readonly=True)
    script = f"""
find . | LC_ALL=C sort | while read -r p; do stat -c '{_STAT_FMT}' "$p"; done
echo ==
sha256sum {" ".join(files)}
echo ==
if (echo x > new-file) 2>/dev/null; then echo WRITABLE; else echo READONLY; fi
"""
    result = run_guest(daemon.socket_path, script)
    assert result.status == 0, result.console
    listing, sums, writable = result.output.split("==\n")
    assert listing == _host_listing(share)
    assert sums == _host_sums(share, files)
    assert writable == "READONLY\n"


def test_hung_guest_is_killed_with_its_console() -> None:
    with pytest.raises(GuestTimeout) as caught:
        run_guest(None, "echo started; sleep 1000", timeout=30)
    message = str(caught.value)
    assert "still running after 30s" in message
    # the kill came while the script ran, and the console came back with the error
    assert "VNYDUS-BEGIN" in message and "VNYDUS-BEGIN" in caught.value.console


def test_debian_rootfs_over_virtiofs(reference_virtiofsd: ReferenceFactory) -> None:
    daemon = reference_virtiofsd(debian_rootfs(), readonly=True)
    script = "python3 -c 'import sys, platform; print(sys.version_info[:2], platform.system())'"
    result = run_guest(daemon.socket_path, script, rootfs=True)
    assert result.status == 0, result.console
    assert result.output == "(3, 11) Linux\n"


def test_setup_failure_is_reported_with_the_console(
    reference_virtiofsd: ReferenceFactory, tmp_path: Path
) -> None:
    # an empty share cannot be a root file system: /init must say so and power off
    daemon = reference_virtiofsd(tmp_path, readonly=True)
    with pytest.raises(GuestSetupFailed) as caught:
        run_guest(daemon.socket_path, "echo never", rootfs=True)
    assert "VNYDUS-SETUP-FAILED: no /run in the root file system" in str(caught.value)
    assert "Run /init as init process" in caught.value.console
