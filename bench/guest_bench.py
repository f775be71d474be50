"""A real guest walks and reads a whole Debian rootfs: virtiofsd-nydus vs virtiofsd.

    .venv/bin/python -m bench.guest_bench [--runs 1] [--out FILE]

The tree is tests/vm/rootfs.py's Debian 12 minbase + python3. virtiofsd (read-only) serves
it as a directory; virtiofsd-nydus serves it converted (`vnydus convert dir:ROOTFS`), first
with an empty chunk cache (cold: every chunk comes from the blob, is decompressed, verified
and cached), then with the cache the cold run left (warm). Each configuration boots a fresh
guest (empty page cache) that mounts the share on /mnt and times, with /proc/uptime (10 ms
steps), inside the guest:

    find . | wc -l                               every directory entry (LOOKUP/READDIRPLUS)
    find . -type f -exec cat {} + > /dev/null     every byte of every regular file (READ)

The host's page cache holds the tree and the blob either way (each is read once up front).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.e2e.images import convert
from tests.vm.accel import chosen_accel
from tests.vm.assets import virtiofsd_version
from tests.vm.guest import run_guest
from tests.vm.ours import our_virtiofsd
from tests.vm.process import Daemon, short_tmpdir
from tests.vm.reference import reference_virtiofsd
from tests.vm.rootfs import debian_rootfs

_SCRIPT = """
read t0 _ < /proc/uptime
n=$(find . | wc -l)
read t1 _ < /proc/uptime
find . -type f -exec cat {} + > /dev/null
rc=$?
read t2 _ < /proc/uptime
echo "BENCH $n $t0 $t1 $t2 $rc"
"""


@dataclass
class Row:
    backend: str
    entries: int
    find_s: float
    read_s: float
    boot_s: float
    read_rc: int


def _tree_stats(root: Path) -> tuple[int, int]:
    """(regular files, bytes in them), and the tree lands in the host's page cache."""
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.isfile(p) and not os.path.islink(p):
                files += 1
                with open(p, "rb") as f:
                    size += len(f.read())
    return files, size


def _warm(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 20):
                    pass


def _measure(name: str, daemon: Daemon) -> Row:
    r = run_guest(daemon.socket_path, _SCRIPT, timeout=900)
    line = next((ln for ln in r.output.splitlines() if ln.startswith("BENCH ")), None)
    if r.status != 0 or line is None:
        raise RuntimeError(f"{name}: guest failed ({r.status}): {r.output[-2000:]}")
    n, t0, t1, t2, rc = line.split()[1:]
    row = Row(name, int(n), float(t1) - float(t0), float(t2) - float(t1), r.boot_seconds, int(rc))
    print(f"    {name}: {row}", file=sys.stderr, flush=True)
    return row


def _median(rows: list[Row]) -> Row:
    """The median run of each measure (runs are few: one noisy neighbour moves a mean)."""
    return Row(
        rows[0].backend,
        rows[0].entries,
        statistics.median(r.find_s for r in rows),
        statistics.median(r.read_s for r in rows),
        statistics.median(r.boot_s for r in rows),
        max(r.read_rc for r in rows),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=1, help="guests per configuration (median kept)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    a = ap.parse_args()
    root = debian_rootfs()
    work = short_tmpdir("vn-gb-")
    try:
        print("converting the rootfs ...", file=sys.stderr, flush=True)
        conv = convert(f"dir:{root}", work / "image")
        files, size = _tree_stats(root)
        _warm(conv.image / "blobs")
        runs: dict[str, list[Row]] = {"virtiofsd": [], "ours-cold": [], "ours-warm": []}
        for i in range(a.runs):
            with reference_virtiofsd(root, work / f"ref{i}.sock") as d:
                runs["virtiofsd"].append(_measure("virtiofsd", d))
            cache = work / f"cache{i}"
            for kind in ("cold", "warm"):
                sock = work / f"ours-{kind}{i}.sock"
                with our_virtiofsd(sock, image=conv.image, cache_dir=cache) as d:
                    runs[f"ours-{kind}"].append(_measure(f"ours-{kind}", d))
            shutil.rmtree(cache)
        rows = [_median(v) for v in runs.values()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = size / (1 << 20)
    print(
        f"\nDebian 12 minbase+python3: {rows[0].entries} entries, {files} files, {mib:.1f} MiB;"
        f" guest: {chosen_accel()}, {os.cpu_count()} host cores; conversion {conv.seconds:.1f}s;"
        f" median of {a.runs} run(s)\n"
    )
    print("| back-end | `find \\| wc -l` | read every file | read MiB/s | boot to mount |")
    print("|---|---:|---:|---:|---:|")
    names = {
        "virtiofsd": f"virtiofsd {virtiofsd_version()} (dir)",
        "ours-cold": "virtiofsd-nydus, cold cache",
        "ours-warm": "virtiofsd-nydus, warm cache",
    }
    for r in rows:
        bad = "" if r.read_rc == 0 else f" (cat failed: {r.read_rc})"
        print(
            f"| {names[r.backend]} | {r.find_s:.2f} s | {r.read_s:.2f} s{bad} | "
            f"{mib / r.read_s:.1f} | {r.boot_s:.1f} s |"
        )
    if a.out:
        a.out.write_text(
            json.dumps(
                {
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "accel": chosen_accel(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg_1m": os.getloadavg()[0],
                    "tree": {"entries": rows[0].entries, "files": files, "bytes": size},
                    "results": [asdict(r) for r in rows],
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
