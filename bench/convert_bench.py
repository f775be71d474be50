"""Conversion throughput on one large layer, against `tar -xf` + `zstd` of the same layer.

    .venv/bin/python -m bench.convert_bench [--src /usr/lib] [--mb 1000] [--gzip] [--level 3]
        [--write]

Builds a plain tar (or tar.gz) of the first --mb MB of regular files under --src, then times,
in this same run, `vnydus convert tar:LAYER OUT` and the baseline `tar -xf LAYER` followed by
`zstd -<level> -T0 LAYER`. Throughput is uncompressed input bytes per second of wall time;
CPU seconds are printed too because this box is shared (other load steals wall time).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str]) -> tuple[float, float]:
    c0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, _children_cpu() - c0


def build_layer(src: Path, mb: int, out: Path, gz: bool) -> int:
    files, total = [], 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                files.append(os.path.relpath(p, "/"))
                total += os.path.getsize(p)
        if total >= mb * 1_000_000:
            break
    listing = out.with_suffix(".list")
    listing.write_text("\n".join(files) + "\n")
    subprocess.run(
        ["tar", "-cf", str(out), "-C", "/", "-T", str(listing), *(["-I", "gzip -1"] if gz else [])],
        check=True,
    )
    return total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default="/usr/lib")
    ap.add_argument("--mb", type=int, default=1000)
    ap.add_argument("--gzip", action="store_true", help="a gzip layer (default: plain tar)")
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="rewrite its bench/RESULTS.md section")
    args = ap.parse_args()
    report: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        report.append(line)

    with tempfile.TemporaryDirectory(prefix="convbench-", dir="/var/tmp") as t:
        tmp = Path(t)
        layer = tmp / ("layer.tar.gz" if args.gzip else "layer.tar")
        build_layer(Path(args.src), args.mb, layer, args.gzip)
        raw = tmp / "raw.tar"
        if args.gzip:
            subprocess.run(f"gzip -dc {layer} > {raw}", shell=True, check=True)
        else:
            raw = layer
        size = raw.stat().st_size
        mb = size / 1e6
        say(
            f"layer: {layer.name}, {mb:,.0f} MB uncompressed, "
            f"{layer.stat().st_size / 1e6:,.0f} MB stored"
        )
        out = tmp / "out"
        wall, cpu = timed(
            [
                sys.executable,
                "-m",
                "virtiofsd_nydus.convert.cli",
                "convert",
                f"tar:{layer}",
                str(out),
                "--compression-level",
                str(args.level),
                "--no-progress",
            ]
        )
        blob = max((p for p in (out / "blobs/sha256").iterdir()), key=lambda p: p.stat().st_size)
        ncpu = os.cpu_count() or 1
        say(
            f"vnydus convert:      {wall:6.2f} s wall {cpu:6.2f} s CPU  {mb / wall:6.1f} MB/s "
            f"(CPU-bound rate {mb / cpu * ncpu:.0f} MB/s on {ncpu} cores)  "
            f"blob {blob.stat().st_size / 1e6:,.0f} MB"
        )
        x = tmp / "x"
        x.mkdir()
        w1, c1 = timed(["tar", "-xf", str(layer), "-C", str(x)])
        w2, c2 = timed(
            ["zstd", f"-{args.level}", "-T0", "-q", "-f", str(raw), "-o", str(tmp / "z.zst")]
        )
        bw, bc = w1 + w2, c1 + c2
        say(
            f"tar -xf + zstd -T0:  {bw:6.2f} s wall {bc:6.2f} s CPU  {mb / bw:6.1f} MB/s "
            f"(tar {w1:.2f} s, zstd {w2:.2f} s; {(tmp / 'z.zst').stat().st_size / 1e6:,.0f} MB)"
        )
        say(f"ratio (baseline wall / vnydus wall): {bw / wall:.2f}; CPU: {bc / cpu:.2f}")
        shutil.rmtree(x)
    if args.write:
        from bench import results_md

        results_md.write_report(
            "Conversion",
            report,
            "Throughput is uncompressed input MB per second of wall time; `tar -xf` + `zstd -T0`"
            " of the same layer, timed in the same run, is the baseline (target: >= 150 MB/s).",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
