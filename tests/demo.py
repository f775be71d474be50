"""`make demo`: boot a real guest kernel that mounts a virtio-fs share and reads from it.

virtiofsd-nydus cannot serve images yet, so for now the demo runs the REFERENCE back-end
(Debian 13's virtiofsd serving a small host directory) through the same rig the VM tests
use: it shows the guest side works end to end, not this project's daemon.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

from tests.vm.accel import chosen_accel
from tests.vm.assets import busybox_static, guest_kernel, virtiofsd_cmd, virtiofsd_version
from tests.vm.guest import GuestRunError, run_guest
from tests.vm.process import DaemonStartError, short_tmpdir
from tests.vm.reference import reference_virtiofsd
from tests.vm.rootfs import debian_rootfs

_NOTICE = """\
NOTE: virtiofsd-nydus cannot serve images yet. This demo runs the REFERENCE back-end,
      Debian 13's virtiofsd {version}, serving a plain host directory; nothing below is
      served by virtiofsd-nydus. It proves the guest side (kernel, virtio-fs, the test rig)."""

_SCRIPT = """\
echo "guest kernel: $(uname -r)"
grep virtiofs /proc/mounts
echo; ls -la
echo; cat hello.txt
echo; sha256sum data.bin
"""

_ROOTFS_SCRIPT = """\
echo "guest kernel: $(uname -r), root: $(grep ' / ' /proc/mounts)"
. /etc/os-release; echo "userland: $PRETTY_NAME"
python3 -c 'import sys; print("python", sys.version.split()[0], "runs from the virtio-fs root")'
"""


def _step(text: str) -> float:
    print(f"==> {text}", flush=True)
    return time.monotonic()


def _make_share(root: Path) -> str:
    """A small directory to serve; returns the sha256 of its data file."""
    (root / "hello.txt").write_text("Hello from the host, read over virtio-fs.\n")
    data = os.urandom(4 << 20)
    (root / "data.bin").write_bytes(data)
    (root / "docs").mkdir()
    (root / "docs" / "README").write_text("a sub-directory\n")
    return hashlib.sha256(data).hexdigest()


def _demo(rootfs: bool) -> int:
    t = _step("fetching guest assets and the reference virtiofsd (cached after the first run)")
    virtiofsd_cmd(), guest_kernel(), busybox_static()
    print(f"    ready in {time.monotonic() - t:.1f}s; cache: ~/.cache/virtiofsd-nydus/")
    print(_NOTICE.format(version=virtiofsd_version()), flush=True)
    accel = chosen_accel()
    print(
        f"    accelerator: {accel}"
        + (" (emulated CPU: KVM is absent or does not boot guests here)" if accel == "tcg" else "")
    )

    work = short_tmpdir("vndemo-")
    try:
        share = work / "share"
        share.mkdir()
        digest = _make_share(share)
        _step(f"serving {share} with the reference virtiofsd (read-only)")
        with reference_virtiofsd(share, work / "vfs.sock") as daemon:
            _step("booting the guest; it mounts the share and runs a few commands")
            result = run_guest(daemon.socket_path, _SCRIPT)
        print("---- guest output " + "-" * 50)
        print(result.output.rstrip())
        print("-" * 68)
        ok = result.status == 0 and f"{digest}  data.bin" in result.output
        print(f"guest exit status {result.status}; data.bin checksum matches host: {ok}")
        print(
            f"timings: boot to mounted share {result.boot_seconds:.1f}s, "
            f"commands {result.script_seconds:.1f}s, whole VM {result.total_seconds:.1f}s"
        )
        if rootfs:
            _step("building/loading the Debian 12 rootfs (debootstrap, cached)")
            root = debian_rootfs()
            _step("booting a guest whose root file system is served over virtio-fs")
            with reference_virtiofsd(root, work / "root.sock") as daemon:
                r2 = run_guest(daemon.socket_path, _ROOTFS_SCRIPT, rootfs=True)
            print(r2.output.rstrip())
            print(f"boot to userland {r2.boot_seconds:.1f}s, whole VM {r2.total_seconds:.1f}s")
            ok = ok and r2.status == 0
        print("demo " + ("OK" if ok else "FAILED") + " (reference back-end, not virtiofsd-nydus)")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.demo", description=__doc__)
    parser.add_argument(
        "--rootfs",
        action="store_true",
        help="also boot a Debian 12 root file system over virtio-fs",
    )
    args = parser.parse_args(argv)
    try:
        return _demo(args.rootfs)
    except (GuestRunError, DaemonStartError, RuntimeError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
