"""Requests/s of the C fast path vs the Python FUSE path, in-process, over a real ring.

    .venv/bin/python -m bench.fastpath_bench [--seconds 2] [--batch 256] [--json]
    .venv/bin/python -m bench.fastpath_bench --daemon [--seconds 5]

A split ring in memfd guest memory is filled with `--batch` requests of one kind; each
round publishes them all (not timed) and times the back-end's side only: with the fast
path, one ``Virtqueue.pop`` (C drains and answers everything); without it, the Python
device path (``pop`` -> ``Server.handle`` -> ``Chain.write`` -> ``complete``) per request.
The image: tests/fuse/images.py (4 KiB chunks), a 16 MiB file fully cached and verified,
and a directory of 1,000 entries. Run on an idle machine.

``--daemon`` instead runs tests/frontend's workloads (a host-side vhost-user front-end)
against ``virtiofsd-nydus --image`` with the fast path off and on, and against the
reference virtiofsd on the same tree (64 MiB big.bin, dir/ of 1,000 files, 1 MiB chunks).
Our daemon's cache is warmed first (verified bits live per process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.fuse import wire
from tests.fuse.images import CS, File, build
from tests.vhost.driver import NEXT, WRITE, Driver, Layout, make_memory
from virtiofsd_nydus.fuse import abi
from virtiofsd_nydus.fuse.abi import Opcode
from virtiofsd_nydus.fuse.fastpath import FastPath
from virtiofsd_nydus.fuse.imagefs import ImageFS
from virtiofsd_nydus.fuse.server import Server
from virtiofsd_nydus.storage import ChunkStore, LocalFsBackend
from virtiofsd_nydus.vhost.vring import Virtqueue

RING = 1024
MIB = 1 << 20
BIG = 16 * MIB


def make_image(tmp: Path) -> tuple[ImageFS, Server, ChunkStore]:
    rnd = random.Random(1)
    names = {f"file-{i:04d}.txt".encode(): File(rnd.randbytes(100)) for i in range(1000)}
    built = build({b"big": File(rnd.randbytes(BIG)), b"dir": names}, tmp)  # type: ignore[dict-item]
    bs = built.bootstrap
    store = ChunkStore.from_bootstrap(bs, [LocalFsBackend(tmp)], tmp / "cache")
    store.ensure_range(range(bs.chunk_count))
    fs = ImageFS(bs, store)
    server = Server(fs)
    body = wire.init_body(flags=wire.KERNEL_FLAGS, flags2=wire.KERNEL_FLAGS2)
    server.handle(wire.request(Opcode.INIT, body), wire.BIG)
    return fs, server, store


def workloads(fs: ImageFS, rnd: random.Random) -> dict[str, tuple[Callable[[], bytes], int]]:
    bs = fs.bs
    big, d = bs.resolve(b"/big"), bs.resolve(b"/dir")
    assert big is not None and d is not None
    names = [n for n, _ in bs.readdir(d)]

    def read(size: int, seq: list[int]) -> Callable[[], bytes]:
        def make() -> bytes:
            off = seq[0]
            seq[0] = (off + size) % BIG if size > CS else rnd.randrange(BIG // CS) * CS
            body = abi.READ_IN.pack(0, off, size, 0, 0, 0, 0)
            return wire.request(Opcode.READ, body, nodeid=big)

        return make

    ga = abi.GETATTR_IN.pack(0, 0, 0)
    return {
        "getattr": (lambda: wire.request(Opcode.GETATTR, ga, nodeid=rnd.randint(1, 1002)), 4096),
        "lookup": (lambda: wire.request(Opcode.LOOKUP, rnd.choice(names) + b"\0", nodeid=d), 4096),
        "randread4k": (read(4096, [0]), 16 + 4096),
        "seqread128k": (read(128 * 1024, [0]), 16 + 128 * 1024),
    }


class Ring:
    """`batch` chains (one readable, one writable descriptor each) at fixed addresses."""

    def __init__(self, batch: int, reply_size: int) -> None:
        region = 64 * MIB
        self.mem, self.fd = make_memory(Layout(regions=((0, region, 0),)))
        self.drv = Driver(self.mem, RING)
        self.q = Virtqueue(1, self.mem, batch_size=64)
        self.q.start(RING, 0, self.drv.desc, self.drv.avail, self.drv.used, True)
        self.batch = batch
        self.req_at = [0x100000 + i * 128 for i in range(batch)]
        base = 0x100000 + batch * 128
        stride = (reply_size + 4095) & ~4095
        assert base + batch * stride < region, "batch too large for guest memory"
        for i in range(batch):
            self.drv.set_desc(2 * i, self.req_at[i], 0, NEXT, 2 * i + 1)
            self.drv.set_desc(2 * i + 1, base + i * stride, reply_size, WRITE)

    def load(self, reqs: list[bytes]) -> None:
        for i, r in enumerate(reqs):
            self.mem.view(self.req_at[i], len(r))[:] = r
            self.drv.set_desc(2 * i, self.req_at[i], len(r), NEXT, 2 * i + 1)
        self.drv.publish(*(2 * i for i in range(len(reqs))))

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


def python_round(q: Virtqueue, server: Server) -> int:
    """What VirtioFsDevice does per chain without a fast path."""
    n = 0
    while chains := q.pop():
        for chain in chains:
            reply = server.handle(chain.read(), chain.write_len)
            q.complete(chain, chain.write(reply) if reply is not None else 0)
            n += 1
    return n


def c_round(q: Virtqueue, server: Server) -> int:
    left = q.pop()
    assert not left, "the fast path left requests to Python"
    return 0


def measure(
    ring: Ring, server: Server, make: Callable[[], bytes], fast: bool, seconds: float
) -> float:
    run = c_round if fast else python_round
    done, spent = 0, 0.0
    while spent < seconds:
        ring.load([make() for _ in range(ring.batch)])
        t0 = time.perf_counter()
        run(ring.q, server)
        spent += time.perf_counter() - t0
        done += ring.batch
    return done / spent


TREE = Path("/tmp/vn-fastpath-bench")
# Our daemon with the fast path switched by $VN_FASTPATH (a bench-only launcher).
LAUNCHER = """
import dataclasses, os, sys
from virtiofsd_nydus.daemon import cli
opts = cli.options
on = os.environ["VN_FASTPATH"] == "1"
cli.options = lambda a: dataclasses.replace(opts(a), fastpath=on)
sys.exit(cli.main(sys.argv[1:]))
"""
DAEMON_WORKLOADS = {
    "getattr": "/",
    "lookup": "/dir",
    "randread4k": "/big.bin",
    "seqread128k": "/big.bin",
}


def bench_tree() -> tuple[Path, Path]:
    """(source tree, converted image dir), made once."""
    src, img = TREE / "tree", TREE / "img"
    if not (img / "image.boot").exists():
        rnd = random.Random(42)
        (src / "dir").mkdir(parents=True, exist_ok=True)
        with open(src / "big.bin", "wb") as f:
            for _ in range(64):
                f.write(rnd.randbytes(MIB))
        for i in range(1000):
            (src / "dir" / f"file-{i:04d}.txt").write_bytes(rnd.randbytes(100))
        vnydus = Path(sys.executable).with_name("vnydus")
        subprocess.run([vnydus, "convert", "--no-progress", f"dir:{src}", img], check=True)
    return src, img


def daemon_mode(seconds: float, names: list[str]) -> dict[str, dict[str, float]]:
    from tests.frontend.workloads import run_workload
    from tests.vm.process import running_daemon, short_tmpdir
    from tests.vm.reference import READY_TEXT, reference_virtiofsd

    src, img = bench_tree()
    tmp = short_tmpdir("vn-fpb-")
    out: dict[str, dict[str, float]] = {n: {} for n in names}

    def run_all(sock: Path, label: str, only: list[str] = names) -> None:
        for name in only:
            depth = 16 if name == "seqread128k" else 64
            res = run_workload(
                str(sock), name, path=DAEMON_WORKLOADS[name], seconds=seconds, queue_depth=depth
            )
            out[name][label] = round(res.ops_per_s)
            print(f"{label:14s} {res.line()}", flush=True)

    for on in ("0", "1"):
        sock = tmp / f"ours{on}.sock"
        argv = [sys.executable, "-c", LAUNCHER, "--socket-path", str(sock), "--image", str(img)]
        argv += ["--cache-dir", str(tmp / "cache"), "--log-level", "warning", "--reconnect"]
        os.environ["VN_FASTPATH"] = on
        with running_daemon(argv, sock, READY_TEXT):
            # Fetch + verify every chunk first: the first read of each goes through Python.
            run_workload(str(sock), "seqread128k", path="/big.bin", seconds=4.0, queue_depth=16)
            run_all(sock, "ours-c" if on == "1" else "ours-python")
    for name in names:  # virtiofsd exits when its front-end hangs up
        with reference_virtiofsd(src, tmp / "ref.sock") as daemon:
            run_all(daemon.socket_path, "virtiofsd", [name])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workload", action="append", help="default: all")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--daemon", action="store_true", help="through the vhost-user socket")
    a = ap.parse_args()
    if a.daemon:
        res = daemon_mode(a.seconds, a.workload or list(DAEMON_WORKLOADS))
        print(json.dumps(res, indent=2))
        return
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fs, server, store = make_image(Path(tmp))
        fp = FastPath(server, fs, store)
        rnd = random.Random(7)
        for name, (make, reply_size) in workloads(fs, rnd).items():
            if a.workload and name not in a.workload:
                continue
            ring = Ring(a.batch, reply_size)
            try:
                ring.q.fast_drain = None
                py = measure(ring, server, make, False, a.seconds)
                ring.q.fast_drain = fp
                c = measure(ring, server, make, True, a.seconds)
            finally:
                ring.close()
            out[name] = {"python_rps": round(py), "c_rps": round(c), "speedup": round(c / py, 1)}
            if not a.json:
                print(f"{name:12s} python {py:>10,.0f} req/s   C {c:>10,.0f} req/s   x{c / py:.1f}")
        stats = fp.stats()
        fp.close()
        store.close()
        fs.bs.close()
    if a.json:
        print(json.dumps({"results": out, "stats": stats}))
    else:
        print("fast path counters:", {k: v for k, v in stats.items() if v})


if __name__ == "__main__":
    main()
