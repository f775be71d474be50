"""The guest's initramfs: busybox, the virtio-fs modules and an /init that runs one script.

The base archive is the same for every run; each run appends a small archive holding
/vnydus/script (and any extra files), which the kernel unpacks over the base.

Protocol with the host (see guest.py):
- kernel command line: vnydus.tag=TAG (mount that virtio-fs tag; absent: mount nothing),
  vnydus.root=1 (the tag is a root file system: switch_root into it before the script);
- console (ttyS0): "VNYDUS-BEGIN" when the script starts, "VNYDUS-EXIT=<status>" when it
  ends, "VNYDUS-SETUP-FAILED: <why>" if the guest could not get that far;
- the script's stdout+stderr go to the second serial port (ttyS1) only, so no kernel
  message ever lands in the middle of them; "VNYDUS-EXIT=<status>" ends that stream too.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

from tests.vm.assets import GUEST_MODULES, busybox_static, guest_kernel
from tests.vm.cpio import CpioWriter

_INIT = r"""#!/bin/busybox sh
# PID 1 of the test guest: load the virtio-fs modules, mount the share, hand over to stage2.
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
fail() { echo "VNYDUS-SETUP-FAILED: $*" >/dev/console; sync; poweroff -f; }
for m in @MODULES@; do
    # a module missing here is built into this kernel
    [ -e /lib/modules/$m.ko ] || continue
    insmod /lib/modules/$m.ko || fail "insmod $m"
done
tag= root=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vnydus.tag=*) tag="${arg#vnydus.tag=}" ;;
        vnydus.root=1) root=1 ;;
    esac
done
if [ -n "$tag" ] && [ "$root" = 1 ]; then
    mount -t virtiofs "$tag" /newroot || fail "mount -t virtiofs $tag /newroot"
    mount -t tmpfs tmpfs /newroot/run || fail "no /run in the root file system"
    mount -t tmpfs tmpfs /newroot/tmp || fail "no /tmp in the root file system"
    cp -a /vnydus /newroot/run/vnydus && cp /bin/busybox /newroot/run/vnydus/busybox \
        || fail "copying /vnydus into the new root"
    for d in dev proc sys; do mount --move /$d /newroot/$d || fail "no /$d in the new root"; done
    export VNYDUS_SHARE=/
    exec switch_root /newroot /run/vnydus/busybox sh /run/vnydus/stage2 /run/vnydus/busybox
fi
if [ -n "$tag" ]; then
    mount -t virtiofs "$tag" /mnt || fail "mount -t virtiofs $tag /mnt"
    export VNYDUS_SHARE=/mnt
fi
exec sh /vnydus/stage2 /bin/busybox
"""

_STAGE2 = r"""# Run the test script (in the final root), report its status, power off. $1 = busybox.
bb="$1"
d=$(dirname "$0")
"$bb" stty -F /dev/ttyS1 raw -echo 2>/dev/null
export VNYDUS_FILES="$d/files"
cd "${VNYDUS_SHARE:-/}"
echo VNYDUS-BEGIN >/dev/console
/bin/sh "$d/script" </dev/null >/dev/ttyS1 2>&1
rc=$?
echo "VNYDUS-EXIT=$rc" >/dev/ttyS1
echo "VNYDUS-EXIT=$rc" >/dev/console
"$bb" sync
"$bb" poweroff -f
"""


@functools.cache
def base_initramfs() -> bytes:
    """busybox, the modules, /init and /vnydus/stage2 as one cpio (built once per process).

    Uncompressed: a gzip'd base followed by the per-run archive fails to unpack ("invalid
    magic at start of compressed archive"), and TCG copies faster than it inflates.
    """
    kernel = guest_kernel()
    w = CpioWriter()
    for d in ("bin", "dev", "proc", "sys", "tmp", "mnt", "newroot", "lib", "lib/modules", "vnydus"):
        w.dir(d)
    w.file("bin/busybox", busybox_static().read_bytes(), 0o755)
    w.symlink("bin/sh", "busybox")
    for m in GUEST_MODULES:
        ko = kernel / "modules" / f"{m}.ko"
        if ko.exists():
            w.file(f"lib/modules/{m}.ko", ko.read_bytes())
    w.file("init", _INIT.replace("@MODULES@", " ".join(GUEST_MODULES)).encode(), 0o755)
    w.file("vnydus/stage2", _STAGE2.encode(), 0o755)
    return w.finish()


def run_initramfs(script: str, files: Mapping[str, bytes] = {}) -> bytes:
    """The base archive with /vnydus/script (and /vnydus/files/NAME for FILES) appended."""
    w = CpioWriter()
    w.dir("vnydus")
    w.file("vnydus/script", script.encode(), 0o755)
    if files:
        w.dir("vnydus/files")
        for name, data in files.items():
            if "/" in name or name in ("", ".", ".."):
                raise ValueError(f"guest file names are plain names: {name!r}")
            w.file(f"vnydus/files/{name}", data)
    return base_initramfs() + w.finish()


def write_run_initramfs(path: Path, script: str, files: Mapping[str, bytes] = {}) -> Path:
    path.write_bytes(run_initramfs(script, files))
    return path
