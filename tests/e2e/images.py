"""Source images for the end-to-end tests and the demo, built locally with umoci.

The three-layer corner-case image of tests/convert (whiteouts, opaque dirs, hard links,
symlinks, xattrs, device nodes, fifos, sparse files, odd names) gets a fourth layer here:
a static busybox with applet symlinks, so a program can run from the image, and files
around the default 1 MiB chunk size.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.convert.images import build_source, run

MiB = 1 << 20
HOST_BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: no shared libraries
APPLETS = ("sh", "ls", "cat", "echo", "sha256sum", "wc", "uname", "find", "sort", "head")


@dataclass(frozen=True)
class SourceImage:
    layout: Path  # OCI layout directory (tag v1)
    reference: Path  # `umoci unpack` of it: the tree the guest must see


@dataclass(frozen=True)
class Converted:
    image: Path  # vnydus convert's output directory
    seconds: float  # wall time of the conversion
    stdout: str  # its summary


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def install_busybox(root: Path) -> None:
    """/bin/busybox plus applet symlinks (absolute and relative) and a /bin/sh script."""
    if not _is_static(HOST_BUSYBOX):
        raise RuntimeError(f"{HOST_BUSYBOX} is not a static binary: apt-get install busybox-static")
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(HOST_BUSYBOX, root / "bin/busybox")
    for i, name in enumerate(APPLETS):
        link = root / "bin" / name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to("/bin/busybox" if i % 2 else "busybox")


def _is_static(path: Path) -> bool:
    r = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
    return r.returncode != 0 or "not a dynamic executable" in r.stdout + r.stderr


def layer4(root: Path) -> None:
    install_busybox(root)
    data = root / "mib"
    data.mkdir()
    (data / "exact").write_bytes(_rand(MiB, 41))
    (data / "minus").write_bytes(_rand(MiB - 1, 42))
    (data / "plus").write_bytes(_rand(MiB + 1, 43))
    (data / "several").write_bytes(_rand(3 * MiB + 4097, 44))
    (data / "empty").write_bytes(b"")
    with open(data / "holes", "wb") as f:  # whole-chunk holes before, between and after
        f.seek(2 * MiB + 5)
        f.write(b"middle")
        f.seek(4 * MiB)
        f.write(_rand(1000, 45))
        f.truncate(7 * MiB)
    (data / ("L" * 255)).write_bytes(b"a name of 255 bytes\n")
    (data / "日本語のファイル名").write_bytes(b"non-ASCII\n")
    (data / "Ωμέγα dir").mkdir()
    (data / "Ωμέγα dir" / "inner file").write_bytes(b"space and greek\n")
    os.link(data / "plus", data / "plus-hardlink")
    os.mkfifo(data / "fifo", 0o640)
    os.setxattr(data / "exact", "user.e2e", b"exactly one chunk")
    (root / "data/text").unlink()  # a whiteout of a layer-1 file
    (root / "etc/motd").write_text("hello from a program inside the image\n")


def build_e2e_source(tmp: Path) -> SourceImage:
    """The tests/convert image plus layer4, and umoci's unpack of the result."""
    layout, _ = build_source(tmp)
    bundle = tmp / "bundle4"
    run("umoci", "unpack", "--image", f"{layout}:v1", bundle)
    layer4(bundle / "rootfs")
    run("umoci", "repack", "--image", f"{layout}:v1", bundle)
    ref = tmp / "ref4"
    run("umoci", "unpack", "--image", f"{layout}:v1", ref)
    return SourceImage(layout, ref / "rootfs")


def build_demo_source(tmp: Path) -> SourceImage:
    """A small two-layer image: a busybox base, then an 'app' layer with a script and data."""
    layout = tmp / "oci"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:demo")
    layers = (_demo_base, _demo_app)
    for i, populate in enumerate(layers):
        bundle = tmp / f"bundle{i}"
        run("umoci", "unpack", "--image", f"{layout}:demo", bundle)
        populate(bundle / "rootfs")
        run("umoci", "repack", "--image", f"{layout}:demo", bundle)
        shutil.rmtree(bundle)
    ref = tmp / "ref"
    run("umoci", "unpack", "--image", f"{layout}:demo", ref)
    return SourceImage(layout, ref / "rootfs")


def _demo_base(root: Path) -> None:
    install_busybox(root)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/os-release").write_text('PRETTY_NAME="vnydus demo base (busybox)"\n')
    (root / "tmp").mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)


def _demo_app(root: Path) -> None:
    app = root / "app"
    app.mkdir()
    (app / "data.bin").write_bytes(_rand(8 * MiB + 123, 7))
    (app / "run.sh").write_text(
        "#!/bin/sh\n"
        '. /etc/os-release; echo "hello from $PRETTY_NAME, running from the image"\n'
        'echo "kernel: $(uname -r)"\n'
        'echo "files in /bin: $(ls /bin | wc -l)"\n'
        "sha256sum /app/data.bin\n"
    )
    (app / "run.sh").chmod(0o755)


def convert(source: str, out: Path, *extra: str) -> Converted:
    """`vnydus convert SOURCE OUT`, timed; raises with its stderr on failure."""
    start = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "virtiofsd_nydus.convert.cli",
            "convert",
            "--no-progress",
            *extra,
            source,
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        raise RuntimeError(f"vnydus convert {source} failed: {r.stderr.strip()}")
    return Converted(out, time.monotonic() - start, r.stdout + r.stderr)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
