"""A Debian rootfs converted to an image is the guest's root file system, served by our
daemon: the guest switches root into it and runs python3. A second device of ours serves
the corner-case image, whose xattrs python3 lists (busybox has no getfattr)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.images import Converted, SourceImage
from tests.vm.guest import run_guest
from tests.vm.ours import OursFactory
from tests.vm.rootfs import debian_rootfs

pytestmark = pytest.mark.vm

# every xattr below argv[1], one line per (path, name); run by the guest's and the host's python
XATTR_DUMP = r"""
import os, sys
root = sys.argv[1]
for d, dirs, files in os.walk(root):
    for p in [d] + [os.path.join(d, n) for n in dirs + files]:
        names = sorted(os.listxattr(p, follow_symlinks=False))
        for n in names:
            v = os.getxattr(p, n, follow_symlinks=False)
            print("." + p[len(root):].replace(os.sep, "/"), n, v.hex(), sep="|")
"""

_SCRIPT = """
python3 -c 'import sys, json, hashlib, sqlite3; print("python", sys.version.split()[0], "runs")'
. /etc/os-release && echo "$PRETTY_NAME"
sha256sum /usr/bin/python3.11 /etc/debian_version
echo "root: $(grep ' / ' /proc/mounts | cut -d' ' -f3)"
mkdir -p /tmp/img && mount -t virtiofs img /tmp/img
echo "==xattrs"
python3 "$VNYDUS_FILES/xattrs.py" /tmp/img | LC_ALL=C sort
"""


def test_debian_rootfs_boots_over_our_daemon(
    rootfs_image: Converted,
    e2e_image: Converted,
    e2e_source: SourceImage,
    vnydus_daemon: OursFactory,
    tmp_path: Path,
) -> None:
    root = vnydus_daemon(image=rootfs_image.image, cache_dir=tmp_path / "cache-root")
    img = vnydus_daemon(image=e2e_image.image, cache_dir=tmp_path / "cache-img")
    extra = [
        "-chardev", f"socket,id=img,path={img.socket_path}",
        "-device", "vhost-user-fs-pci,queue-size=1024,chardev=img,tag=img",
    ]  # fmt: skip
    r = run_guest(
        root.socket_path,
        _SCRIPT,
        rootfs=True,
        timeout=300,
        files={"xattrs.py": XATTR_DUMP.encode()},
        extra_qemu_args=extra,
    )
    assert r.status == 0, r.output
    head, xattrs = r.output.split("==xattrs\n")
    rootfs = debian_rootfs()
    sums = [
        f"{hashlib.sha256((rootfs / p).read_bytes()).hexdigest()}  /{p}"
        for p in ("usr/bin/python3.11", "etc/debian_version")
    ]
    pretty = (rootfs / "etc/os-release").read_text().split('PRETTY_NAME="')[1].split('"')[0]
    lines = head.splitlines()
    assert lines[0].startswith("python 3.11.") and lines[0].endswith(" runs"), head
    assert lines[1:] == [pretty, *sums, "root: virtiofs"], head
    host = subprocess.run(
        [sys.executable, "-c", XATTR_DUMP, str(e2e_source.reference)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    want = sorted(host.splitlines(), key=str.encode)
    assert xattrs.splitlines() == want
    assert any(line.startswith("./mib/exact|user.e2e|") for line in want)
