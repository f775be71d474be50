"""Bootstrap benchmark: write a synthetic image of N files, then open and query it.

    .venv/bin/python -m bench.bootstrap_bench [--files 1000000] [--merkle] [--write]

The image: /wide (10% of the files in one directory), /tree/dNN/sNN/fNN (the rest, 100 per
directory) and /deep/l1/.../l8/target (10 components, 50 siblings per level). Open, RSS and
lookups are measured in a fresh subprocess so nothing the writer allocated is counted.
Targets: open < 50 ms, RSS after open < 20 MB over the interpreter, 10-level resolve < 20 us.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blake3

from virtiofsd_nydus.format.model import Blob, Chunk, FileChunk, Image, Node
from virtiofsd_nydus.format.writer import write_bootstrap_file

DEEP = b"/deep/" + b"/".join(b"l%d" % i for i in range(1, 9)) + b"/target"  # 10 steps

_PROBE = r"""
import json, statistics, sys, time
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
base = rss()
from virtiofsd_nydus.format.reader import Bootstrap
imported = rss()
t = time.perf_counter()
bs = Bootstrap.open(sys.argv[1])
open_ms = (time.perf_counter() - t) * 1e3
after_open = rss()
deep = sys.argv[2].encode()
parts = [p for p in deep.split(b"/") if p]
def timeit(fn, n=3000):
    # Median wall time, and median thread CPU time (what the call costs when the shared
    # machine's other load takes the core away mid-call).
    wall, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter_ns(), time.thread_time_ns()
        fn()
        cpu.append(time.thread_time_ns() - c); wall.append(time.perf_counter_ns() - t)
    return statistics.median(wall) / 1e3, statistics.median(cpu) / 1e3
def chain():
    ino = 1
    for p in parts:
        ino = bs.lookup(ino, p)
    return ino
assert bs.resolve(deep) == chain() is not None
wide = bs.resolve(b"/wide")
res = dict(base=base, imported=imported, after_open=after_open, open_ms=open_ms,
           resolve_us=timeit(lambda: bs.resolve(deep)), chain_us=timeit(chain),
           wide_us=timeit(lambda: bs.lookup(wide, b"w%07d" % 4242)),
           getattr_us=timeit(lambda: bs.inode(4242)))
list(bs.walk()) if len(sys.argv) > 3 else None
res["after_queries"] = rss()
print(json.dumps(res))
"""


def synthetic(files: int) -> Image:
    blob = Blob("sha256:" + "00" * 32, 1 << 50, 1 << 50)
    nodes = 0
    empty: dict[bytes, bytes] = {}  # shared: the writer never mutates the model

    def file(size: int = 4096) -> Node:
        nonlocal nodes
        nodes += 1
        c = Chunk(
            blake3.blake3(nodes.to_bytes(8, "little")).digest(),
            0,
            nodes * 4096,
            2048,
            nodes * 4096,
            size,
            True,
        )
        return Node(
            stat.S_IFREG | 0o644, size=size, mtime_ns=nodes, xattrs=empty, chunks=[FileChunk(0, c)]
        )

    def directory(children: dict[bytes, Node]) -> Node:
        return Node(stat.S_IFDIR | 0o755, xattrs=empty, children=children)

    wide_n = files // 10
    wide = directory({b"w%07d" % i: file() for i in range(wide_n)})
    rest = files - wide_n - 8 * 50 - 1
    tree: dict[bytes, Node] = {}
    i = 0
    while i < rest:
        d = tree.setdefault(b"d%03d" % (i // 10000), directory({}))
        assert d.children is not None
        sub = d.children.setdefault(b"s%03d" % (i // 100 % 100), directory({}))
        assert sub.children is not None
        sub.children[b"f%03d" % (i % 100)] = file()
        i += 1
    node, name = file(), b"target"
    for level in range(8, 0, -1):  # l8 .. l1, each with 50 siblings of the next step
        kids: dict[bytes, Node] = {b"sib%02d" % j: file() for j in range(50)}
        kids[name] = node
        node, name = directory(kids), b"l%d" % level
    deep = directory({name: node})
    root = directory({b"wide": wide, b"tree": directory(tree), b"deep": deep})
    return Image(root=root, blobs=[blob], chunk_size=1 << 20)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _us(name: str, wall_cpu: list[float], note: str) -> tuple[str, str, str]:
    wall, cpu = wall_cpu
    return name, f"{wall:.1f} us", f"median wall; {cpu:.1f} us median CPU. {note}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--merkle", action="store_true", help="also time verify_merkle()")
    ap.add_argument("--write", action="store_true", help="rewrite its bench/RESULTS.md section")
    args = ap.parse_args()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bootstrap"
        t = time.perf_counter()
        image = synthetic(args.files)
        rows.append(("build model", f"{time.perf_counter() - t:.1f} s", f"{args.files:,} files"))
        model_rss = _peak_mb()
        t, c = time.perf_counter(), time.process_time()
        write_bootstrap_file(image, path)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        rows.append(("write bootstrap", f"{wall:.1f} s", f"{cpu:.1f} s CPU; target tens of s"))
        rows.append(("bootstrap size", f"{path.stat().st_size / 2**20:.1f} MiB", ""))
        rows.append(("writer peak RSS", f"{_peak_mb():.0f} MB", f"model alone: {model_rss:.0f} MB"))
        del image
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path), DEEP.decode()],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out)
        rows += [
            ("open", f"{r['open_ms']:.2f} ms", "target < 50 ms"),
            ("RSS interpreter", f"{r['base']:.1f} MB", "baseline"),
            ("RSS after import", f"{r['imported']:.1f} MB", ""),
            (
                "RSS after open",
                f"{r['after_open']:.1f} MB",
                f"+{r['after_open'] - r['base']:.1f} MB over baseline (target < 20)",
            ),
            _us("resolve 10 levels", r["resolve_us"], "target < 20 us"),
            _us("lookup chain 10", r["chain_us"], "lookup() x10"),
            _us("lookup in wide dir", r["wide_us"], f"{args.files // 10:,} entries"),
            _us("inode() getattr", r["getattr_us"], ""),
            ("RSS after queries", f"{r['after_queries']:.1f} MB", ""),
        ]
        from virtiofsd_nydus.format.reader import Bootstrap

        with Bootstrap.open(path) as bs:
            t = time.perf_counter()
            bs.verify()
            rows.append(("verify()", f"{time.perf_counter() - t:.2f} s", "section digests"))
            if args.merkle:
                t, c = time.perf_counter(), time.process_time()
                bs.verify_merkle()
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                rows.append(("verify_merkle()", f"{wall:.1f} s", f"{cpu:.1f} s CPU; every inode"))
    load = Path("/proc/loadavg").read_text().split()[:3]
    rows.append(("load average", " ".join(load), f"{os.cpu_count()} CPUs, shared"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value:>12}  {note}" for name, value, note in rows]
    print("\n".join(lines))
    if args.write:
        from bench import results_md

        results_md.write_report(
            "Bootstrap",
            lines,
            "A synthetic image (one 100,000-entry directory, 100-entry leaf directories, a"
            " 10-level path with 50 siblings per level); open and queries run in a fresh"
            " interpreter, RSS is VmRSS of that process.",
        )


if __name__ == "__main__":
    main()
