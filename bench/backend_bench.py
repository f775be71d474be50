"""Our daemon against the reference virtiofsd, same tree, same driver, same run.

    .venv/bin/python -m bench.backend_bench [--seconds 3] [--runs 3] [--quick] [--profile]

Ours serves the tree converted by ``vnydus convert`` (its chunk cache warmed by one full
read first); virtiofsd ``--readonly`` serves the unpacked tree (its page cache warmed).
Each workload keeps ``--queue-depth`` requests in flight; medians of ``--runs`` runs.
Writes the "Back-end" section of bench/RESULTS.md and bench/results/backend.json (unless
``--no-write``). ``--profile`` also runs our daemon under cProfile (and perf,
when installed) for one workload and prints where its time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pstats
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import results_md
from tests.daemon import rig
from tests.frontend import fuse_abi as fa
from tests.frontend.client import FuseClient
from tests.frontend.frontend import Frontend
from tests.frontend.workloads import Result, run_workload
from tests.vm.ours import ours_argv
from tests.vm.process import Daemon, running_daemon, short_tmpdir
from tests.vm.reference import READY_TEXT, reference_virtiofsd

ROOT = Path("/tmp/vn-backend-bench")
TREE = ROOT / "src"
IMAGE = ROOT / "img"
STAMP = ROOT / ".complete-v1"
BIG_MB = 256
SMALL_DIRS, SMALL_PER_DIR = 50, 1000  # 50,000 files
LARGE_DIR = 10_000
CHUNK = 1 << 20
NOFILE = ("--inode-file-handles=prefer",)


def raise_nofile(want: int = 200_000) -> None:
    """virtiofsd holds an fd per looked-up inode; root may lift the hard limit for it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))


# (workload, path, unit): what each row measures.
ROWS = [
    ("seqread128k", "/big.bin", "MB/s"),
    ("randread4k", "/big.bin", "ops/s"),
    ("lookup", "/files", "ops/s"),
    ("getattr", "/files", "ops/s"),
    ("readdirplus", "/large", "ops/s"),
]


def make_inputs() -> None:
    """The source tree and its converted image, made once and kept under /tmp."""
    if STAMP.exists():
        return
    shutil.rmtree(ROOT, ignore_errors=True)
    TREE.mkdir(parents=True)
    rnd = random.Random(42)
    with open(TREE / "big.bin", "wb") as f:
        for _ in range(BIG_MB):
            f.write(rnd.randbytes(1 << 20))
    for i in range(SMALL_DIRS):
        d = TREE / "files" / f"d{i:02d}"
        d.mkdir(parents=True)
        for j in range(SMALL_PER_DIR):
            (d / f"file-{j:04d}").write_bytes(b"x" * (j % 200))
    large = TREE / "large"
    large.mkdir()
    for j in range(LARGE_DIR):
        (large / f"entry-with-a-longish-name-{j:06d}").touch()
    t = time.monotonic()
    rig.convert(f"dir:{TREE}", IMAGE, chunk_size=CHUNK)
    print(f"converted the tree in {time.monotonic() - t:.1f}s", flush=True)
    STAMP.touch()


def warm_page_cache() -> None:
    with open(TREE / "big.bin", "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass


def warm_our_cache(sock: Path) -> None:
    """One full pass over big.bin through the daemon: every chunk fetched and cached."""
    fe = Frontend(str(sock), mem_size=128 << 20, timeout=30.0).start()
    try:
        fs = FuseClient(fe, timeout=60.0)
        fs.init()
        e = fs.lookup(fa.ROOT_ID, b"big.bin")
        fh = fs.open(e.nodeid).fh
        step = 1 << 20
        for base in range(0, e.attr.size, 32 * step):
            offs = range(base, min(e.attr.size, base + 32 * step), step)
            fs.wait([fs.submit(fa.Op.READ, e.nodeid, fa.read_in(fh, o, step), step) for o in offs])
        fe.stop()
    finally:
        fe.close()


@contextlib.contextmanager
def ours(tmp: Path, extra: tuple[str, ...] = (), prefix: tuple[str, ...] = ()) -> Iterator[Daemon]:
    """Our daemon on the image; PREFIX (e.g. a profiler) replaces the interpreter."""
    sock = tmp / "ours.sock"
    extra = ("--log-level", "warning", *extra)
    argv = ours_argv(sock, image=IMAGE, cache_dir=ROOT / "cache", extra_args=extra)
    if prefix:
        argv = [*prefix, *argv[2:]]  # argv is [python, -m, module, ...]
    with running_daemon(argv, sock, READY_TEXT, timeout=60) as d:
        yield d


@dataclass
class Row:
    workload: str
    unit: str
    ours: list[float]
    ref: list[float]

    @staticmethod
    def value(r: Result, unit: str) -> float:
        return r.mb_per_s if unit == "MB/s" else r.ops_per_s

    def median(self, xs: list[float]) -> float:
        return statistics.median(xs) if xs else 0.0

    @property
    def ratio(self) -> float:
        ref = self.median(self.ref)
        return self.median(self.ours) / ref if ref else 0.0


def depth_for(name: str, depth: int) -> int:
    # Big sequential reads do best with fewer in flight (cache footprint), as frontend_bench.
    return min(depth, 16) if name == "seqread128k" else depth


def run_all(a: argparse.Namespace, tmp: Path) -> list[Row]:
    rows = {name: Row(name, unit, [], []) for name, _, unit in ROWS if name in a.workloads}
    with ours(tmp, ("--reconnect",)) as d:
        warm_our_cache(d.socket_path)
        for k in range(a.runs):
            for name, path, unit in ROWS:
                if name not in rows:
                    continue
                kw = {"path": path, "seconds": a.seconds, "queue_depth": depth_for(name, a.depth)}
                # Alternate who goes first: the second of a pair runs with warmer CPU caches
                # and a different neighbour load.
                for who in ("ours", "ref") if k % 2 == 0 else ("ref", "ours"):
                    if who == "ours":
                        r = run_workload(str(d.socket_path), name, **kw)
                        rows[name].ours.append(Row.value(r, unit))
                        print(f"run {k + 1} ours      {r.line()}", flush=True)
                        continue
                    warm_page_cache()
                    sock = tmp / f"ref-{name}-{k}.sock"
                    # virtiofsd keeps an O_PATH fd per looked-up inode unless it uses file
                    # handles; the 20,000-entry walk would hit the 20,000 fd limit here.
                    with reference_virtiofsd(TREE, sock, extra_args=NOFILE) as ref:
                        r = run_workload(str(ref.socket_path), name, **kw)
                    rows[name].ref.append(Row.value(r, unit))
                    print(f"run {k + 1} virtiofsd {r.line()}", flush=True)
    return list(rows.values())


def table(rows: list[Row]) -> str:
    def cell(xs: list[float]) -> str:
        return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})" if xs else "-"

    out = [
        "| workload | ours: median (min-max) | virtiofsd: median (min-max) | ours / virtiofsd |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(f"| {r.workload} ({r.unit}) | {cell(r.ours)} | {cell(r.ref)} | {r.ratio:.2f}x |")
    return "\n".join(out)


def profile(tmp: Path, workload: str, seconds: float) -> str:
    """cProfile our daemon through one workload (it exits when the front-end leaves)."""
    prof = tmp / "daemon.prof"
    name, path, _ = next(r for r in ROWS if r[0] == workload)
    prefix = (sys.executable, "-m", "cProfile", "-o", str(prof), "-m")  # + module
    with ours(tmp, prefix=prefix) as d:
        run_workload(str(d.socket_path), name, path=path, seconds=seconds, queue_depth=64)
        d.proc.wait(30)
    buf = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buf)
    stats.sort_stats("tottime").print_stats(12)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if "ncalls" in ln)
    text = "\n".join(lines[start:])
    perf = _perf(tmp, name, path, seconds)
    return text + ("\n\nperf (by shared object):\n" + perf if perf else "")


def _perf(tmp: Path, name: str, path: str, seconds: float) -> str:
    if not shutil.which("perf"):
        return ""
    data = tmp / "perf.data"
    with ours(tmp) as d:
        rec = subprocess.Popen(
            ["perf", "record", "-q", "-F", "499", "-p", str(d.proc.pid), "-o", str(data)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        run_workload(str(d.socket_path), name, path=path, seconds=seconds, queue_depth=64)
        rec.send_signal(2)
        rec.wait(30)
    rep = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--sort", "dso", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "\n".join(ln.rstrip() for ln in rep.stdout.splitlines() if ln.strip())[:1500]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--queue-depth", dest="depth", type=int, default=64)
    ap.add_argument("--workload", dest="workloads", action="append", choices=[r[0] for r in ROWS])
    ap.add_argument("--quick", action="store_true", help="1 run of 1 s each (make bench)")
    ap.add_argument("--profile", action="store_true", help="also profile our daemon")
    ap.add_argument("--profile-workload", default="randread4k", choices=[r[0] for r in ROWS])
    ap.add_argument("--no-write", action="store_true", help="leave bench/RESULTS.md alone")
    a = ap.parse_args(argv)
    if a.quick:
        a.seconds, a.runs = 1.0, 1
    a.workloads = a.workloads or [r[0] for r in ROWS]
    cmd = "python -m bench.backend_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    make_inputs()
    raise_nofile()
    tmp = short_tmpdir("vn-bb-")
    try:
        rows = run_all(a, tmp)
        text = table(rows)
        print("\n" + text)
        prof = profile(tmp, a.profile_workload, a.seconds) if a.profile else ""
        if prof:
            print(f"\nwhere our daemon's time goes ({a.profile_workload}):\n{prof}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not a.no_write:
        out = Path(__file__).parent / "results" / "backend.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "command": cmd.strip(),
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "load_avg_1m": os.getloadavg()[0],
                    "rows": [r.__dict__ for r in rows],
                },
                indent=2,
            )
            + "\n"
        )
        body = [
            f"Command: `{cmd.strip()}` ({time.strftime('%Y-%m-%d', time.gmtime())}, "
            f"load average {os.getloadavg()[0]:.1f} at the end).",
            "",
            f"Tree: big.bin {BIG_MB} MiB random, files/ {SMALL_DIRS * SMALL_PER_DIR:,} small "
            f"files in {SMALL_DIRS} dirs, large/ {LARGE_DIR:,} entries. Ours: the converted "
            f"image ({CHUNK >> 20} MiB chunks), chunk cache warm. virtiofsd 1.13 --readonly "
            f"on the unpacked tree, page cache warm. Driver: tests/frontend, {a.depth} requests "
            f"in flight (16 for seqread128k), 1 request queue; median of {a.runs} run(s) of "
            f"{a.seconds:g} s. lookup/getattr cycle over the first 20,000 entries of files/.",
            "",
            text,
        ]
        if prof:
            body += [
                "",
                f"Profile of our daemon ({a.profile_workload}, cProfile, top by own time):",
                "",
                "```",
                prof,
                "```",
            ]
        results_md.write_section("Back-end", "\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
