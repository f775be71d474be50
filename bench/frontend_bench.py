"""The test driver's workloads against the reference virtiofsd, on a generated tree.

    .venv/bin/python -m bench.frontend_bench [--seconds 5] [--queue-depth 64] [--out FILE]

Each workload gets a fresh virtiofsd (it exits when its front-end hangs up). The numbers
measure the driver and virtiofsd together on this machine; run on an idle box.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

from tests.frontend.workloads import WORKLOADS, run_workload
from tests.vm.assets import virtiofsd_version
from tests.vm.process import short_tmpdir
from tests.vm.reference import reference_virtiofsd

TREE = Path("/tmp/vn-frontend-bench-tree")
STAMP = TREE / ".complete-v1"
PATHS = {"seqread128k": "/big.bin", "randread4k": "/big.bin", "readdirplus": "/large"}


def make_tree() -> Path:
    """big.bin (512 MiB), dirNN/ with 20 x 500 small files, large/ with 5,000 entries."""
    if STAMP.exists():
        return TREE
    TREE.mkdir(exist_ok=True)
    rnd = random.Random(42)
    with open(TREE / "big.bin", "wb") as f:
        for _ in range(512):
            f.write(rnd.randbytes(1 << 20))
    for i in range(20):
        d = TREE / f"dir{i:02d}"
        d.mkdir(exist_ok=True)
        for j in range(500):
            (d / f"file{j:04d}").write_bytes(b"x" * (j % 200))
    large = TREE / "large"
    large.mkdir(exist_ok=True)
    for j in range(5000):
        (large / f"entry-with-a-longish-name-{j:06d}").touch()
    STAMP.touch()
    return TREE


def warm_page_cache(tree: Path) -> None:
    """Read the data file on the host first: proactive reclaim (DAMON) drops cold pages, and
    a READ benchmark that hits the disk measures the disk."""
    with open(tree / "big.bin", "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--queue-depth", type=int, default=64)
    ap.add_argument("--workload", action="append", choices=WORKLOADS)
    ap.add_argument("--repeat", type=int, default=1, help="runs per workload; the best is kept")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    a = ap.parse_args()
    tree = make_tree()
    tmp = short_tmpdir("vn-fb-")
    results = []
    for name in a.workload or WORKLOADS:
        # Big sequential reads do best with fewer in flight (cache footprint): cap at 16.
        depth = min(a.queue_depth, 16) if name == "seqread128k" else a.queue_depth
        runs = []
        for _ in range(a.repeat):
            warm_page_cache(tree)
            with reference_virtiofsd(tree, tmp / f"{name}.sock") as daemon:
                res = run_workload(
                    str(daemon.socket_path),
                    name,
                    path=PATHS.get(name, "/"),
                    seconds=a.seconds,
                    queue_depth=depth,
                )
            print(res.line(), flush=True)
            runs.append(res)
        results.append(max(runs, key=lambda r: r.ops_per_s).as_dict())
    if a.out:
        a.out.write_text(
            json.dumps(
                {
                    "backend": f"virtiofsd {virtiofsd_version()}",
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg_1m": os.getloadavg()[0],
                    "results": results,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
