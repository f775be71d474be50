"""`make demo`: an OCI image, converted, served by virtiofsd-nydus to a real guest kernel.

Builds a small two-layer OCI image locally with umoci (a static busybox base, an app layer
with a script and 8 MiB of data), converts it with `vnydus convert`, starts virtiofsd-nydus
on it with an empty chunk cache, boots the test guest (QEMU, vhost-user-fs) which mounts the
image and runs the app from it in a chroot, then prints the guest's output and the timings.
--rootfs also boots a guest whose root file system is a converted Debian image (python3).
No internet needed beyond Debian's archive on the first run (the guest kernel, busybox and
the rootfs are fetched once and cached).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

from tests.e2e.images import Converted, build_demo_source, convert, dir_size
from tests.vm.accel import chosen_accel
from tests.vm.assets import busybox_static, guest_kernel
from tests.vm.cache import cache_dir
from tests.vm.guest import GuestResult, GuestRunError, run_guest
from tests.vm.ours import our_virtiofsd
from tests.vm.process import DaemonStartError, short_tmpdir
from tests.vm.rootfs import debian_rootfs
from virtiofsd_nydus.format.reader import Bootstrap

_SCRIPT = """\
echo "guest kernel $(uname -r); share: $(grep virtiofs /proc/mounts | cut -d' ' -f1-3)"
read t0 _ < /proc/uptime
chroot "$VNYDUS_SHARE" /app/run.sh
rc=$?
read t1 _ < /proc/uptime
echo "PROGRAM-SECONDS=$t0 $t1 RC=$rc"
"""

_ROOTFS_SCRIPT = """\
echo "root: $(grep ' / ' /proc/mounts | cut -d' ' -f1-3)"
. /etc/os-release; echo "userland: $PRETTY_NAME"
read t0 _ < /proc/uptime
python3 -c 'import sys, json; print("python", sys.version.split()[0], "runs from the image")'
read t1 _ < /proc/uptime
echo "PROGRAM-SECONDS=$t0 $t1"
"""


def _step(text: str) -> float:
    print(f"==> {text}", flush=True)
    return time.monotonic()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _boot(image: Path, work: Path, name: str, script: str, rootfs: bool) -> GuestResult:
    cache = work / f"{name}-cache"
    with our_virtiofsd(work / f"{name}.sock", image=image, cache_dir=cache) as daemon:
        try:
            result = run_guest(daemon.socket_path, script, rootfs=rootfs, timeout=300)
        except GuestRunError:
            print(f"---- virtiofsd-nydus log ----\n{daemon.log()[-3000:]}", file=sys.stderr)
            raise
    print("---- guest output " + "-" * 50)
    print("\n".join(ln for ln in result.output.splitlines() if "PROGRAM-SECONDS=" not in ln))
    print("-" * 68)
    with Bootstrap.open(image / "image.boot") as bs:
        total = sum(bs.chunk(i).uncompressed_size for i in range(bs.chunk_count))
    print(
        f"    chunk cache after the run: {_mib(_allocated(cache))} of the image's "
        f"{_mib(total)} of chunk data (fetched on demand)"
    )
    return result


def _allocated(path: Path) -> int:
    """Bytes on disk (cache files are sparse: chunks sit at fixed offsets)."""
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def _program_seconds(result: GuestResult) -> float:
    for line in result.output.splitlines():
        if line.startswith("PROGRAM-SECONDS="):  # two /proc/uptime readings (10 ms steps)
            t0, t1 = line.removeprefix("PROGRAM-SECONDS=").split()[:2]
            return float(t1) - float(t0)
    return float("nan")


def _report_conversion(what: str, conv: Converted, source_bytes: int) -> None:
    boot = conv.image / "image.boot"
    print(
        f"    {what}: {_mib(source_bytes)} in, converted in {conv.seconds:.1f}s -> "
        f"{_mib(dir_size(conv.image))} out (bootstrap {boot.stat().st_size / 1024:.0f} KiB)"
    )


def _demo(work: Path, rootfs: bool) -> bool:
    fresh = not any(cache_dir().glob("kernel-*"))
    t = _step(
        "fetching the guest kernel and busybox from Debian's archive (first run only; a minute)"
        if fresh
        else "guest assets (cached under ~/.cache/virtiofsd-nydus/)"
    )
    guest_kernel(), busybox_static()
    print(f"    ready in {time.monotonic() - t:.1f}s")
    accel = chosen_accel()
    print(
        f"    accelerator: {accel}" + (" (emulated CPU: no usable KVM)" if accel == "tcg" else "")
    )

    t = _step("building a two-layer OCI image with umoci (busybox base + app layer)")
    src = build_demo_source(work / "src")
    print(f"    built in {time.monotonic() - t:.1f}s: {src.layout}")
    _step("converting it: vnydus convert oci:LAYOUT:demo IMAGE")
    conv = convert(f"oci:{src.layout}:demo", work / "image")
    _report_conversion("OCI layout", conv, dir_size(src.layout))

    _step("starting virtiofsd-nydus (empty cache) and booting the guest; it runs /app/run.sh")
    result = _boot(conv.image, work, "app", _SCRIPT, rootfs=False)
    digest = hashlib.sha256((src.reference / "app/data.bin").read_bytes()).hexdigest()
    ok = result.status == 0 and "RC=0" in result.output and digest in result.output
    print(f"    data.bin checksum in the guest matches the host: {digest in result.output}")
    print(
        f"timings: QEMU start to image mounted {result.boot_seconds:.1f}s, "
        f"program from the image {_program_seconds(result):.2f}s, whole VM "
        f"{result.total_seconds:.1f}s"
    )

    if rootfs:
        t = _step("Debian 12 minbase + python3 rootfs (debootstrap on the first run, cached)")
        root = debian_rootfs()
        print(f"    ready in {time.monotonic() - t:.1f}s")
        _step("converting it: vnydus convert dir:ROOTFS IMAGE")
        rconv = convert(f"dir:{root}", work / "rootimg")
        _report_conversion("Debian rootfs", rconv, dir_size(root))
        _step("booting a guest whose root file system is that image, served by virtiofsd-nydus")
        r2 = _boot(rconv.image, work, "root", _ROOTFS_SCRIPT, rootfs=True)
        print(
            f"timings: QEMU start to userland {r2.boot_seconds:.1f}s, python3 "
            f"{_program_seconds(r2):.2f}s, whole VM {r2.total_seconds:.1f}s"
        )
        ok = ok and r2.status == 0 and "runs from the image" in r2.output
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.demo", description=__doc__)
    parser.add_argument(
        "--rootfs",
        action="store_true",
        help="also boot a converted Debian 12 root file system over virtiofsd-nydus",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    work = short_tmpdir("vndemo-")
    try:
        ok = _demo(work, args.rootfs)
        print("demo " + ("OK" if ok else "FAILED"))
        return 0 if ok else 1
    except (GuestRunError, DaemonStartError, RuntimeError, AssertionError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
