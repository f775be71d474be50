"""Cross-image dedup: two versions of a Debian 12 rootfs, as OCI layers vs with --chunk-dict.

    .venv/bin/python -m bench.dedup_bench [--a ROOTFS] [--b ROOTFS] [--chunk-size 1M ...] [--write]

A = debootstrap --variant=minbase bookworm (made into /var/tmp/vnydus-bench/minbase when
missing), B = minbase + python3 (the VM rig's cache, ~/.cache/virtiofsd-nydus/...). Each
becomes a one-layer OCI image (tar.gz, as `docker build` would ship it). Prints the two
images' layer bytes, then what vnydus stores: A alone, B alone, and B with --chunk-dict A
(only chunks A lacks).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE = Path.home() / ".cache/virtiofsd-nydus/debian-bookworm-minbase-python3-v1"
MINBASE = Path("/var/tmp/vnydus-bench/minbase")


def ensure_minbase(path: Path) -> None:
    if (path / "usr/bin").is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"debootstrap minbase into {path} (a few minutes)...", file=sys.stderr)
    subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(path), "http://deb.debian.org/debian"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for deb in (path / "var/cache/apt/archives").glob("*.deb"):  # as image builds do
        deb.unlink()


def layer_tgz(rootfs: Path, out: Path) -> int:
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "-czf", str(out), "-C", str(rootfs), "."],
        check=True,
    )
    return out.stat().st_size


def convert(src: str, out: Path, chunk_size: str, *extra: str) -> dict[str, int]:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "virtiofsd_nydus.convert.cli",
            "convert",
            src,
            str(out),
            "--chunk-size",
            chunk_size,
            "--no-progress",
            *extra,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    sizes = [d["size"] for d in manifest["layers"]]
    return {
        "new_blob": sizes[0] if len(sizes) > 1 else 0,
        "bootstrap": sizes[-1],
        "layers": len(sizes),
    }


def mb(n: int) -> str:
    return f"{n / 1e6:8.1f} MB"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", type=Path, default=MINBASE)
    ap.add_argument("--b", type=Path, default=CACHE)
    ap.add_argument("--chunk-size", nargs="+", default=["1M", "64K"])
    ap.add_argument("--write", action="store_true", help="rewrite its bench/RESULTS.md section")
    args = ap.parse_args()
    report: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        report.append(line)

    if args.a == MINBASE:
        ensure_minbase(MINBASE)
    with tempfile.TemporaryDirectory(prefix="dedupbench-", dir="/var/tmp") as t:
        tmp = Path(t)
        a_tgz, b_tgz = tmp / "a.tar.gz", tmp / "b.tar.gz"
        oci_a, oci_b = layer_tgz(args.a, a_tgz), layer_tgz(args.b, b_tgz)
        say(f"A {args.a}\nB {args.b}")
        say(f"OCI layers (tar.gz):   A {mb(oci_a)}  B {mb(oci_b)}  A+B {mb(oci_a + oci_b)}")
        for cs in args.chunk_size:
            a = convert(f"tar:{a_tgz}", tmp / f"a-{cs}", cs)
            b = convert(f"tar:{b_tgz}", tmp / f"b-{cs}", cs)
            bd = convert(f"tar:{b_tgz}", tmp / f"bd-{cs}", cs, "--chunk-dict", str(tmp / f"a-{cs}"))
            alone = a["new_blob"] + b["new_blob"]
            dedup = a["new_blob"] + bd["new_blob"]
            say(f"chunk size {cs}:")
            say(f"  vnydus A {mb(a['new_blob'])}  B alone {mb(b['new_blob'])}  A+B {mb(alone)}")
            say(
                f"  vnydus B with --chunk-dict A stores {mb(bd['new_blob'])} new; "
                f"A+B {mb(dedup)} = {dedup / (oci_a + oci_b):.1%} of the OCI layers' bytes "
                f"(bootstraps: {mb(a['bootstrap'] + bd['bootstrap'])}, gzip-compressed)"
            )
    if args.write:
        from bench import results_md

        results_md.write_report(
            "Dedup",
            report,
            "A is debootstrap of Debian 12 minbase, B is minbase + python3; each packed as a"
            " one-layer tar.gz OCI image (the OCI bytes). B converted with `--chunk-dict A`"
            " stores only the chunks A lacks.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
