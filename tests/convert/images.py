"""Build real source images with umoci (and hand-written layer tars for what umoci never
writes: opaque dirs, cross-layer hard links, odd paths, repeated entries)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

CS = 64 << 10  # the chunk size the tests convert with (small: fast tests)


def run(*args: str | Path, cwd: Path | None = None) -> str:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300)
    if r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}): {r.stderr}")
    return r.stdout


def _write(p: Path, data: bytes, mode: int = 0o644, mtime_ns: int | None = None) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    p.chmod(mode)
    if mtime_ns is not None:
        os.utime(p, ns=(mtime_ns, mtime_ns))


def _rand(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def layer1(root: Path) -> None:
    _write(root / "etc/hello", b"hello world\n", mtime_ns=1_600_000_000_123_456_789)
    os.setxattr(root / "etc/hello", "user.test", b"value\x00\xff")
    _write(root / "bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
    _write(root / "bin/suid", b"suid", 0o4755)
    os.chown(root / "bin/suid", 1000, 1000)
    exact = _rand(CS, 1)
    _write(root / "data/exact", exact)
    _write(root / "data/minus", _rand(CS - 1, 2))
    _write(root / "data/plus", _rand(CS + 1, 3))
    _write(root / "data/big", _rand(3 * CS, 4) + exact + _rand(100, 5))  # dedups with exact
    _write(root / "data/empty", b"")
    _write(root / "data/zeros", bytes(2 * CS + 7))
    _write(root / "data/text", b"compressible " * 20000)
    with open(root / "data/sparse", "wb") as f:
        f.truncate(10 * CS)
        f.seek(5 * CS + 3)
        f.write(b"island")
    os.link(root / "data/exact", root / "data/hl1")
    long_dir = root / ("d" * 60)
    _write(long_dir / ("n" * 120), b"long name")
    _write(root / "ünïcødé-文件", b"non-ascii")
    os.symlink("/etc/hello", root / "abs")
    os.symlink("etc/hello", root / "rel")
    os.symlink("/nonexistent/target", root / "dangling")
    (root / "dev").mkdir(exist_ok=True)
    os.mknod(root / "dev/null", 0o020666, os.makedev(1, 3))
    os.mknod(root / "dev/loop0", 0o060660, os.makedev(7, 0))
    os.mkfifo(root / "dev/fifo", 0o600)
    _write(root / "old/x", b"old x")
    _write(root / "old/sub/y", b"old y")
    _write(root / "replace-me", b"a file, later a dir")
    _write(root / "dir-to-file/inner", b"inner")
    _write(root / "opq/a", b"lower a")
    _write(root / "opq/keep/b", b"lower b")
    _write(root / "twice", b"v0")
    os.utime(root / "abs", ns=(1_500_000_000_000_000_001,) * 2, follow_symlinks=False)


def layer2(root: Path) -> None:
    import shutil

    shutil.rmtree(root / "old")
    (root / "replace-me").unlink()
    _write(root / "replace-me/child", b"now a dir")
    shutil.rmtree(root / "dir-to-file")
    _write(root / "dir-to-file", b"now a file")
    _write(root / "data/plus", _rand(CS + 1, 33))
    _write(root / "data/dup", (root / "data/exact").read_bytes())
    (root / "etc/hello").chmod(0o600)


def layer3_tar() -> bytes:
    """A hand-made layer: opaque dir, cross-layer hard link, odd paths, repeats, xattrs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, data: bytes | None = None, **kw: object) -> None:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)

        add("opq/c", b"upper c before the marker", mode=0o644)
        add("opq/", type=tarfile.DIRTYPE, mode=0o750)
        add("opq/.wh..wh..opq", b"")
        add("opq/d", b"upper d", mode=0o644)
        add("data/xhl", type=tarfile.LNKTYPE, linkname="data/exact")
        add("./etc/../etc/added", b"added via ..", mode=0o644)
        add("/abs-path-file", b"leading slash", mode=0o644)
        add("twice", b"first", mode=0o644)
        add("twice", b"second wins", mode=0o640)
        add(".wh.rel", b"")
        add("xattr-file", b"x", mode=0o644, pax_headers={"SCHILY.xattr.user.foo": "bar"})
        add("etc/.wh.nothing-here", b"")  # whiteout of something that never existed
    return buf.getvalue()


def build_source(tmp: Path) -> tuple[Path, Path]:
    """An OCI layout at tmp/src (tag v1, 3 layers) and umoci's own unpack at tmp/ref."""
    layout = tmp / "src"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:v1")
    # repack diffs against the unpacked manifest: unpack afresh for every layer
    for i, populate in enumerate((layer1, layer2)):
        bundle = tmp / f"bundle{i}"
        run("umoci", "unpack", "--image", f"{layout}:v1", bundle)
        populate(bundle / "rootfs")
        run("umoci", "repack", "--image", f"{layout}:v1", bundle)
    l3 = tmp / "layer3.tar"
    l3.write_bytes(layer3_tar())
    run("umoci", "raw", "add-layer", "--image", f"{layout}:v1", l3)
    ref = tmp / "ref"
    run("umoci", "unpack", "--image", f"{layout}:v1", ref)
    return layout, ref / "rootfs"
