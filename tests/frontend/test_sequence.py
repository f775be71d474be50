"""The exact message sequence the driver sends, recorded by a scripted listener.

The listener is not a back-end: it answers the GET_* questions and acks, and writes down
what QEMU's side said, so the start/stop order and multi-queue set-up can be checked.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path

from tests.frontend import vhost_msg as vm
from tests.frontend.conn import Connection
from tests.frontend.frontend import Frontend

FEATURES = vm.F_VERSION_1 | vm.F_PROTOCOL_FEATURES | vm.F_EVENT_IDX | vm.F_INDIRECT_DESC
PROTOCOL = vm.P_MQ | vm.P_REPLY_ACK | vm.P_CONFIGURE_MEM_SLOTS | vm.P_CONFIG


class Recorder(threading.Thread):
    def __init__(self, path: Path, num_queues: int) -> None:
        super().__init__(daemon=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.num_queues = num_queues
        self.log: list[tuple[str, bytes, int]] = []  # (name, payload, number of fds)
        self.start()

    def run(self) -> None:
        sock, _ = self.listener.accept()
        conn = Connection(sock, timeout=10.0)
        answers = {
            vm.Req.GET_FEATURES: vm.u64(FEATURES),
            vm.Req.GET_PROTOCOL_FEATURES: vm.u64(PROTOCOL),
            vm.Req.GET_QUEUE_NUM: vm.u64(self.num_queues),
            vm.Req.GET_MAX_MEM_SLOTS: vm.u64(32),
        }
        try:
            while True:
                req, flags, payload, fds = conn.recv_message(10.0)
                for fd in fds:
                    os.close(fd)
                self.log.append((vm.Req(req).name, payload, len(fds)))
                if req == vm.Req.GET_VRING_BASE:
                    answer = vm.vring_state(struct.unpack_from("<I", payload)[0], 0)
                elif req in answers:
                    answer = answers[vm.Req(req)]
                elif flags & vm.FLAG_NEED_REPLY:
                    answer = vm.u64(0)
                else:
                    continue
                conn.send(vm.message(req, answer, vm.VERSION | vm.FLAG_REPLY))
        except ConnectionError:
            pass


def test_start_sequence_with_four_request_queues(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "s", num_queues=5)
    fe = Frontend(str(tmp_path / "s"), request_queues=4, queue_size=256, mem_size=16 << 20)
    fe.start()
    fe.stop()
    fe.close()
    rec.join(10)
    names = [n for n, _, _ in rec.log]
    assert names[:8] == [
        "GET_FEATURES",
        "GET_PROTOCOL_FEATURES",
        "SET_PROTOCOL_FEATURES",
        "GET_QUEUE_NUM",
        "GET_MAX_MEM_SLOTS",
        "SET_OWNER",
        "GET_FEATURES",
        "SET_FEATURES",
    ]
    sent = {n: p for n, p, _ in rec.log}
    assert vm.reply_u64(sent["SET_FEATURES"]) == FEATURES  # everything offered is wanted
    # CONFIG is never taken; the rest of the sound minimum is.
    assert vm.reply_u64(sent["SET_PROTOCOL_FEATURES"]) == PROTOCOL & ~vm.P_CONFIG
    assert names[8] == "SET_MEM_TABLE" and rec.log[8][2] == 1  # one region, its fd
    per_queue = ["SET_VRING_NUM", "SET_VRING_BASE", "SET_VRING_ADDR", "SET_VRING_KICK"]
    per_queue.append("SET_VRING_CALL")
    assert names[9 : 9 + 25] == per_queue * 5  # hiprio + 4 request queues
    assert names[34 : 34 + 5] == ["SET_VRING_ENABLE"] * 5
    stop = names[39:]
    assert stop == ["SET_VRING_ENABLE", "GET_VRING_BASE"] * 5
    kicks = [p for n, p, fds in rec.log if n == "SET_VRING_KICK" and fds == 1]
    assert [vm.reply_u64(p) for p in kicks] == [0, 1, 2, 3, 4]
    nums = [vm.reply_vring_state(p) for n, p, _ in rec.log if n == "SET_VRING_NUM"]
    assert nums == [(i, 256) for i in range(5)]
