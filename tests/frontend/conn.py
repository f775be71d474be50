"""The vhost-user socket: send messages with fds, read replies, always with a timeout."""

from __future__ import annotations

import array
import os
import socket
import time
from collections.abc import Sequence

from . import vhost_msg as vm


class BackendGone(ConnectionError):
    """The back-end closed the socket (crashed, or dropped us on purpose)."""


class ReplyTimeout(TimeoutError):
    """No reply within the deadline; the back-end may be hung."""


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    """Connect to a listening back-end, retrying while the socket is not there yet."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Connection:
    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self.sock = sock
        self.timeout = timeout

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        try:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise BackendGone(f"send failed: {e}") from e

    def _recv_exact(self, n: int, deadline: float) -> tuple[bytes, list[int]]:
        buf = bytearray()
        fds: list[int] = []
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReplyTimeout(f"{len(buf)}/{n} reply bytes before the timeout")
            self.sock.settimeout(left)
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(
                    n - len(buf), socket.CMSG_LEN(vm.MAX_FDS * 4)
                )
            except TimeoutError as e:
                raise ReplyTimeout(f"{len(buf)}/{n} reply bytes before the timeout") from e
            except ConnectionResetError as e:
                raise BackendGone(str(e)) from e
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(raw[: len(raw) - len(raw) % 4])
                    fds.extend(got)
            if not data:
                raise BackendGone("back-end closed the socket")
            buf += data
        return bytes(buf), fds

    def recv_message(self, timeout: float | None = None) -> tuple[int, int, bytes, list[int]]:
        """Any message: (request, flags, payload, fds). Fds are the caller's to close."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        head, fds = self._recv_exact(vm.HEADER.size, deadline)
        req, flags, size = vm.parse_header(head)
        if size > 1 << 16:
            raise vm.ReplyError(f"message payload {size} bytes")
        payload, more = self._recv_exact(size, deadline) if size else (b"", [])
        return req, flags, payload, fds + more

    def recv_reply(self, request: int, timeout: float | None = None) -> bytes:
        req, flags, payload, fds = self.recv_message(timeout)
        for fd in fds:
            os.close(fd)
        vm.check_reply_header(request, vm.HEADER.pack(req, flags, len(payload)))
        return payload

    def peer_closed(self) -> bool:
        """True if the back-end hung up (checked without blocking or consuming data)."""
        # With a socket timeout set, recv() would first wait for readiness: go non-blocking.
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(self.timeout)
        return data == b""

    def close(self) -> None:
        self.sock.close()
