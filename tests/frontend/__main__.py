"""python -m tests.frontend --socket PATH --workload NAME: benchmark a vhost-user-fs back-end."""

from __future__ import annotations

import argparse
import json
import sys

from .conn import BackendGone
from .workloads import WORKLOADS, run_workload


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.frontend", description=__doc__)
    ap.add_argument("--socket", required=True, help="the back-end's vhost-user socket")
    ap.add_argument("--workload", required=True, choices=WORKLOADS)
    ap.add_argument("--path", default="/", help="file or directory in the served tree")
    ap.add_argument("--queue-depth", type=int, default=64, help="requests in flight per queue")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--queues", type=int, default=1, help="request queues (if offered)")
    ap.add_argument("--queue-size", type=int, default=1024)
    ap.add_argument("--io-size", type=int, help="READ/READDIRPLUS size in bytes")
    ap.add_argument("--no-event-idx", action="store_true")
    ap.add_argument("--indirect", action="store_true", help="indirect descriptor chains")
    ap.add_argument("--poll", action="store_true", help="spin on the used ring (busy core)")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    try:
        res = run_workload(
            a.socket,
            a.workload,
            path=a.path,
            queue_depth=a.queue_depth,
            seconds=a.seconds,
            warmup=a.warmup,
            queues=a.queues,
            queue_size=a.queue_size,
            io_size=a.io_size,
            event_idx=not a.no_event_idx,
            indirect=a.indirect,
            connect_timeout=a.connect_timeout,
            poll=a.poll,
        )
    except (OSError, ValueError, RuntimeError, BackendGone) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res.as_dict()) if a.json else res.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
