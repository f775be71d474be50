"""A host-side vhost-user-fs front-end: plays QEMU and the guest's virtio-fs driver at once.

It talks to any vhost-user-fs back-end socket with its own codecs (never the daemon's):
memfd guest memory shared by SCM_RIGHTS, the QEMU 7.2+ start/stop sequence, split
virtqueues with EVENT_IDX and indirect descriptors, FUSE 7.38 requests and replies.

    fe = Frontend("/run/vfs.sock").start()        # negotiate, share memory, set up rings
    fs = FuseClient(fe); fs.init()
    e = fs.lookup(1, b"etc"); fh = fs.open(e.nodeid).fh; fs.read(e.nodeid, fh, 0, 4096)
    fe.stop(); fe.close()                         # GET_VRING_BASE per queue, hang up

Layers: fuse_abi / vhost_msg (bytes only), conn (socket + fds), memory (memfd regions),
vring (split ring, raw descriptor access), frontend (vhost-user sequence), client (FUSE
calls, many in flight), pipeline + workloads (benchmarks, `python -m tests.frontend`),
fuzz (malformed descriptors and messages, and what became of them).
"""

from tests.frontend.client import FuseClient, NoReply, Reply
from tests.frontend.conn import BackendGone, ReplyTimeout
from tests.frontend.frontend import Frontend, Queue, VhostNack
from tests.frontend.fuse_abi import FuseError, ReplyFormatError
from tests.frontend.fuzz import Observation, Outcome, RawQueue, raw_message
from tests.frontend.workloads import WORKLOADS, Result, run_workload

__all__ = [
    "WORKLOADS",
    "BackendGone",
    "Frontend",
    "FuseClient",
    "FuseError",
    "NoReply",
    "Observation",
    "Outcome",
    "Queue",
    "RawQueue",
    "Reply",
    "ReplyFormatError",
    "ReplyTimeout",
    "Result",
    "VhostNack",
    "raw_message",
    "run_workload",
]
