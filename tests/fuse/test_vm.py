"""A real guest kernel against our FUSE server: an image and a host directory, through
the whole daemon (vhost-user, virtqueues, FUSE, image fs / passthrough fs)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vm.guest import run_guest
from tests.vm.process import running_daemon

pytestmark = pytest.mark.vm

WAITING = "Waiting for vhost-user socket connection"
# path|type|size|mode|links|uid|gid for every path below ".", in byte order
_FMT = "%n|%F|%s|%a|%h|%u|%g"
_MiB = 1 << 20


def _tree(root: Path) -> list[str]:
    """A tree with the corners a FUSE server gets wrong; returns its regular files."""
    (root / "hello.txt").write_text("hello from the image\n")
    (root / "empty").write_bytes(b"")
    big = os.urandom(3 * _MiB + 12345)
    (root / "big.bin").write_bytes(big)
    with open(root / "sparse.bin", "wb") as f:  # holes at the start, middle and end
        f.seek(2 * _MiB + 100)
        f.write(b"island one")
        f.seek(5 * _MiB)
        f.write(os.urandom(5000))
        f.truncate(8 * _MiB)
    (root / "dir").mkdir()
    for i in range(400):  # several READDIRPLUS rounds
        (root / "dir" / f"entry-{i:04d}-{'x' * (i % 50)}").write_bytes(b"%d\n" % i)
    (root / "dir" / "private").write_bytes(b"secret")
    (root / "dir" / "private").chmod(0o600)
    os.chown(root / "dir" / "private", 1000, 1000)
    (root / "link").symlink_to("dir/private")
    (root / "dangling").symlink_to("/nowhere/at/all")
    os.link(root / "hello.txt", root / "hard")
    return [
        "hello.txt",
        "empty",
        "big.bin",
        "sparse.bin",
        "dir/private",
        "hard",
        "dir/entry-0399-" + "x" * 49,
    ]


def _listing(root: Path) -> str:
    paths = sorted(["."] + [f"./{p.relative_to(root)}" for p in root.rglob("*")], key=os.fsencode)
    out = subprocess.run(
        ["stat", "-c", _FMT, *paths], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    # directory sizes are the host file system's business, not the image's
    return "".join(
        "|".join(f if i != 2 or parts[1] != "directory" else "D" for i, f in enumerate(parts))
        + "\n"
        for parts in (line.split("|") for line in out.splitlines())
    )


_SCRIPT = f"""
find . | LC_ALL=C sort | while read -r p; do stat -c '{_FMT}' "$p"; done |
  awk -F'|' 'BEGIN{{OFS="|"}} $2=="directory"{{$3="D"}} {{print}}'
echo ==
sha256sum {{files}}
echo ==
readlink link; readlink dangling
echo ==
[ "$(stat -c %i hello.txt)" = "$(stat -c %i hard)" ] && echo SAME-INODE
dd if=sparse.bin bs=4096 skip=512 count=1 2>/dev/null | od -An -c | head -2
if (echo x > new-file) 2>/dev/null; then echo WRITABLE; else echo READONLY; fi
cat dir/no-such-file 2>/dev/null || echo ENOENT-OK
ls dir | wc -l
"""


def test_guest_reads_an_image(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = _tree(src)
    img = tmp_path / "img"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "virtiofsd_nydus.convert.cli",
            "convert",
            "--no-progress",
            "--chunk-size",
            str(256 << 10),
            f"dir:{src}",
            str(img),
        ],
        check=True,
        capture_output=True,
    )
    sock = Path("/tmp") / f"vnfuse-{os.getpid()}.sock"
    argv = [
        sys.executable,
        "-m",
        "virtiofsd_nydus.daemon.cli",
        "--socket-path",
        str(sock),
        "--image",
        str(img),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    with running_daemon(argv, sock, WAITING):
        r = run_guest(sock, _SCRIPT.replace("{files}", " ".join(files)), timeout=240)
    assert r.status == 0, r.output
    listing, sums, links, rest = r.output.split("==\n")
    assert listing == _listing(src)
    assert sums == "".join(
        f"{hashlib.sha256((src / n).read_bytes()).hexdigest()}  {n}\n" for n in files
    )
    assert links == "dir/private\n/nowhere/at/all\n"
    lines = rest.splitlines()
    assert lines[0] == "SAME-INODE"
    assert "\\0" in lines[1] and "i" not in lines[1]  # page 512 is inside the first hole
    assert "READONLY" in lines and "ENOENT-OK" in lines
    assert lines[-1].strip() == "401"


def test_guest_writes_a_host_directory(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "keep").write_text("keep me\n")
    sock = Path("/tmp") / f"vnfuse-pt-{os.getpid()}.sock"
    argv = [
        sys.executable,
        "-m",
        "virtiofsd_nydus.daemon.cli",
        "--socket-path",
        str(sock),
        "--shared-dir",
        str(share),
    ]
    script = """
set -e
mkdir -p a/b/c
echo payload > a/b/c/file
dd if=/dev/zero of=a/zeros bs=65536 count=20 2>/dev/null
ln -s c/file a/b/link
ln a/b/c/file a/hardlink
mv a/b/c/file a/b/c/renamed
chmod 640 a/b/c/renamed
chown 1234:4321 a/hardlink
touch -d '2001-02-03 04:05:06' a/zeros
rm keep
echo appended >> a/b/c/renamed
cat a/b/link 2>/dev/null || echo LINK-BROKEN
cat a/hardlink
ls -la a | wc -l
"""
    with running_daemon(argv, sock, WAITING):
        r = run_guest(sock, script, timeout=240)
    assert r.status == 0, r.output
    assert r.output.splitlines()[:3] == ["LINK-BROKEN", "payload", "appended"]
    renamed = share / "a" / "b" / "c" / "renamed"
    assert renamed.read_text() == "payload\nappended\n"
    st = os.stat(renamed)
    assert (oct(st.st_mode & 0o777), st.st_nlink, st.st_uid, st.st_gid) == ("0o640", 2, 1234, 4321)
    assert (share / "a" / "zeros").stat().st_size == 20 * 65536
    assert (share / "a" / "zeros").stat().st_mtime == 981173106
    assert os.readlink(share / "a" / "b" / "link") == "c/file"
    assert not (share / "keep").exists()


def test_guest_sees_kata_style_mounts_of_one_export(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "os-release").write_text("ID=vnydus\n")
    (src / "bin").mkdir()
    (src / "bin" / "tool").write_bytes(os.urandom(300_000))
    img = tmp_path / "img"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "virtiofsd_nydus.convert.cli",
            "convert",
            "--no-progress",
            f"dir:{src}",
            str(img),
        ],
        check=True,
        capture_output=True,
    )
    shared = tmp_path / "shared"
    shared.mkdir()
    sock = Path("/tmp") / f"vnfuse-ps-{os.getpid()}.sock"
    argv = [
        sys.executable,
        "-m",
        "tests.fuse.pseudo_daemon",
        str(sock),
        str(shared),
        str(img),
        str(tmp_path / "cache"),
    ]
    tool = hashlib.sha256((src / "bin" / "tool").read_bytes()).hexdigest()
    script = """
ls -1
ls -1 rafs/c1
cat rafs/c1/lowerdir/etc/os-release
sha256sum rafs/c1/lowerdir/bin/tool | cut -d' ' -f1
mkdir -p containers/c1/rootfs
cp rafs/c1/lowerdir/etc/os-release containers/c1/rootfs/copied
if (echo x > rafs/c1/lowerdir/new) 2>/dev/null; then echo RAFS-WRITABLE; else echo RAFS-RO; fi
if mkdir rafs/c2 2>/dev/null; then echo PSEUDO-WRITABLE; else echo PSEUDO-RO; fi
a=$(stat -c %d containers); b=$(stat -c %d rafs/c1/lowerdir); c=$(stat -c %d .)
[ "$a" != "$b" ] && [ "$b" != "$c" ] && echo SUBMOUNTS || echo "devs $a $b $c"
"""
    with running_daemon(argv, sock, WAITING):
        r = run_guest(sock, script, timeout=240)
    assert r.status == 0, r.output
    assert r.output.splitlines() == [
        "containers",
        "rafs",
        "lowerdir",
        "ID=vnydus",
        tool,
        "RAFS-RO",
        "PSEUDO-RO",
        "SUBMOUNTS",
    ]
    assert (shared / "c1" / "rootfs" / "copied").read_text() == "ID=vnydus\n"
