"""python -m bench (make bench): every benchmark in a quick mode, then a summary.

    .venv/bin/python -m bench [--full] [--only NAME ...]

Quick mode is a smoke run (seconds per workload, smaller synthetic images) and leaves
bench/RESULTS.md alone; ``--full`` runs backend_bench and rss_bench at their defaults and
rewrites their sections. dedup_bench and guest_bench (debootstrap, TCG guests: many minutes)
only run when named with ``--only``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass

# (script, quick args, full args)
QUICK: list[tuple[str, list[str], list[str]]] = [
    ("backend_bench", ["--quick", "--no-write"], ["--profile"]),
    ("rss_bench", ["--files", "100000", "--lookups", "2000", "--no-write"], []),
    ("bootstrap_bench", ["--files", "100000"], ["--files", "100000"]),
    ("fastpath_bench", ["--seconds", "0.5"], ["--seconds", "0.5"]),
    ("frontend_bench", ["--seconds", "1"], ["--seconds", "1"]),
    ("convert_bench", ["--mb", "50"], ["--mb", "50"]),
]
SLOW: dict[str, list[str]] = {"dedup_bench": [], "guest_bench": []}
TAIL = 12  # lines of each script's output in the summary


@dataclass
class Ran:
    name: str
    rc: int
    seconds: float
    tail: list[str]


def run(name: str, args: list[str]) -> Ran:
    cmd = [sys.executable, "-m", f"bench.{name}", *args]
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    t = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    rc = proc.wait()
    return Ran(name, rc, time.monotonic() - t, [ln for ln in lines if ln.strip()][-TAIL:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--full", action="store_true", help="full runs; update bench/RESULTS.md")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="just these scripts")
    a = ap.parse_args(argv)
    plan = [(n, full if a.full else quick) for n, quick, full in QUICK]
    if a.only:
        known = {n for n, _, _ in QUICK} | set(SLOW)
        unknown = set(a.only) - known
        if unknown:
            ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        plan = [(n, args) for n, args in plan if n in a.only]
        plan += [(n, args) for n, args in SLOW.items() if n in a.only]
    done = [run(n, args) for n, args in plan]
    print("\n" + "=" * 30 + " summary " + "=" * 30)
    for r in done:
        state = "ok" if r.rc == 0 else f"FAILED (exit {r.rc})"
        print(f"\n--- {r.name}: {state}, {r.seconds:.0f}s")
        print("\n".join(r.tail))
    if not a.only:
        print(f"\nnot run (slow, use --only): {', '.join(SLOW)}")
    return 0 if all(r.rc == 0 for r in done) else 1


if __name__ == "__main__":
    sys.exit(main())
