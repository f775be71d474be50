"""The I/O glue: the vhost-user socket, fds, kick and call eventfds, on an asyncio loop.

``Connection`` reads one request at a time (header with its fds, then the payload), hands
it to :class:`BackendProtocol`, carries out the actions (map memory, start and stop rings)
and sends the reply. ``serve`` listens (a path, or an inherited listening fd as Kata passes
with ``--fd``) and runs one connection at a time.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable, Sequence

from ..errors import GuestError, LocalError
from . import message as m
from . import protocol as p
from .device import VirtioDevice
from .memory import GuestMemory
from .vring import Virtqueue

log = logging.getLogger(__name__)
_FD_SPACE = socket.CMSG_SPACE(m.MAX_FDS * array.array("i").itemsize)
_BATCHES_PER_TURN = 16  # batches one queue may pop before yielding to the event loop


def _close_all(fds: Sequence[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class Connection:
    """One front-end on one socket. Await :attr:`closed`; call :meth:`close` to hang up."""

    def __init__(self, sock: socket.socket, device: VirtioDevice) -> None:
        self.sock = sock
        self.device = device
        self.loop = asyncio.get_running_loop()
        self.protocol = p.BackendProtocol(device)
        self.memory = GuestMemory()
        self.queues = [
            Virtqueue(i, self.memory, device.batch_size) for i in range(device.num_queues)
        ]
        for q in self.queues:
            q.on_complete = self._completed
        self._kick: list[int | None] = [None] * len(self.queues)
        self._err: list[int | None] = [None] * len(self.queues)
        self._to_notify: set[Virtqueue] = set()
        self._drained: dict[int, asyncio.Future[None]] = {}
        self._reported: set[tuple[int, int]] = set()  # (queue, epoch) broken and logged
        self._buf = bytearray()
        self._fds: list[int] = []
        self._header: m.Header | None = None
        self._out = bytearray()
        self._hung_up = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._on_readable)

    # ---- reading requests --------------------------------------------------------------

    def _on_readable(self) -> None:
        want = m.HEADER_SIZE if self._header is None else self._header.size
        try:
            data, anc, flags, _ = self.sock.recvmsg(
                want - len(self._buf), _FD_SPACE, socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.info("vhost-user: front-end connection error: %s", exc)
            self.close()
            return
        for level, kind, cmsg in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(cmsg[: len(cmsg) - len(cmsg) % got.itemsize])
                self._fds.extend(got)
        if flags & socket.MSG_CTRUNC:
            log.warning("vhost-user: more than %d fds on one message", m.MAX_FDS)
        if not data and not anc:
            log.info("vhost-user: front-end disconnected")
            self.close()
            return
        self._buf += data
        if len(self._buf) < want:
            return
        if self._header is None:
            self._header = m.Header.unpack(bytes(self._buf))
            self._buf.clear()
            if self._header.size > m.MAX_PAYLOAD:
                # The stream cannot be trusted to resynchronise: hang up.
                log.warning("vhost-user: %d-byte payload announced: closing", self._header.size)
                self.close()
                return
            if self._header.size > 0:
                return
        header, payload, fds = self._header, bytes(self._buf), self._fds
        self._header, self._buf, self._fds = None, bytearray(), []
        self._dispatch(header, payload, fds)

    def _dispatch(self, header: m.Header, payload: bytes, fds: list[int]) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "vhost-user: %s flags %#x, %d bytes, %d fds",
                m.request_name(header.request),
                header.flags,
                header.size,
                len(fds),
            )
        try:
            out = self.protocol.handle(header, payload, fds)
        except Exception:
            # Our bug (or the device's): the front-end would wait forever for a reply.
            log.exception("vhost-user: %s: internal error, closing", m.request_name(header.request))
            _close_all(fds)
            self.close()
            return
        _close_all(out.unused_fds)
        if out.error:
            log.warning("vhost-user: %s", out.error)
        ok = True
        for action in out.actions:
            try:
                self._apply(action)
            except GuestError as exc:
                log.warning("vhost-user: %s: %s", m.request_name(header.request), exc)
                ok = False
            except Exception:
                log.exception("vhost-user: %s: internal error", m.request_name(header.request))
                ok = False
        if out.deferred:
            stop = out.actions[-1]
            assert isinstance(stop, p.StopRing)
            self.loop.remove_reader(self.sock.fileno())  # no request until the reply is out
            task = self.loop.create_task(self._stop_ring(stop.index))
            self._tasks.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._tasks.discard)
            return
        reply = out.finish(ok)
        if reply is not None:
            self._send(reply)

    # ---- actions -----------------------------------------------------------------------

    def _apply(self, action: p.Action) -> None:
        match action:
            case p.SetMemTable(regions):
                self.memory.clear()
                failed = []
                for region, fd in regions:
                    try:
                        self._map(region, fd)
                    except GuestError as exc:
                        failed.append(str(exc))
                    finally:
                        _close_all([fd])
                self._remap()
                if failed:
                    raise GuestError("; ".join(failed))
            case p.AddRegion(region, fd):
                try:
                    self._map(region, fd)
                finally:
                    _close_all([fd])
            case p.RemoveRegion(region):
                self.memory.remove(region.gpa, region.size)
                self._remap()
            case p.StartRing(index, c, kick_fd):
                q = self.queues[index]
                try:
                    q.start(c.size, c.base, c.desc, c.avail, c.used, c.event_idx)
                except GuestError:
                    self.protocol.ring_failed(index)
                    _close_all([kick_fd])
                    raise
                self._set_kick(index, kick_fd)
                self.device.queue_started(q)
                self.loop.call_soon(self._process, index)
            case p.SetKick(index, fd):
                self._set_kick(index, fd)
            case p.SetCall(index, fd):
                q = self.queues[index]
                _close_all([q.call_fd])
                q.call_fd = fd
            case p.SetErr(index, fd):
                _close_all([self._err[index]])
                self._err[index] = fd
            case p.EnableRing(index, enabled):
                if enabled:
                    self.loop.call_soon(self._process, index)
            case p.SetFeatures(features):
                self.device.set_features(features)
            case p.Reset():
                self._stop_all()
                self.device.reset()
            case p.StopRing():
                pass  # handled by _dispatch once the other actions ran

    def _map(self, region: m.MemoryRegion, fd: int) -> None:
        try:
            self.memory.add(region, fd)
        except GuestError:
            self.protocol.forget_region(region)
            raise

    def _remap(self) -> None:
        for q in self.queues:
            try:
                q.remap()
            except GuestError as exc:
                log.warning("vhost-user: after a memory change: %s", exc)
        self._release_memory()

    def _set_kick(self, index: int, fd: int) -> None:
        old = self._kick[index]
        if old is not None:
            self.loop.remove_reader(old)
            _close_all([old])
        self._kick[index] = fd
        os.set_blocking(fd, False)
        self.loop.add_reader(fd, self._on_kick, index, fd)

    def _drop_kick(self, index: int) -> None:
        fd = self._kick[index]
        if fd is not None:
            self.loop.remove_reader(fd)
            _close_all([fd])
            self._kick[index] = None

    async def _stop_ring(self, index: int) -> None:
        """GET_VRING_BASE: stop kicks, let in-flight chains finish, reply with the index."""
        q = self.queues[index]
        self._drop_kick(index)
        if q.inflight:
            fut = self.loop.create_future()
            self._drained[index] = fut
            await fut
        last = q.stop()
        self.device.queue_stopped(q)
        self._send(self.protocol.ring_stopped(index, last))
        if not self._hung_up:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)

    def _stop_all(self) -> None:
        for q in self.queues:
            self._drop_kick(q.index)
            if q.running:
                q.stop()
                self.device.queue_stopped(q)
            _close_all([q.call_fd, self._err[q.index]])
            q.call_fd = None
            self._err[q.index] = None
        for fut in self._drained.values():
            if not fut.done():
                fut.cancel()
        self._drained.clear()

    # ---- the queues --------------------------------------------------------------------

    def _on_kick(self, index: int, fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 8)
        self._process(index)

    def _process(self, index: int) -> None:
        """Pop and hand over chains until the ring is empty with kicks re-enabled."""
        q = self.queues[index]
        if not q.running or not self.protocol.ring_enabled(index):
            return
        q.disable_notify()
        for _ in range(_BATCHES_PER_TURN):
            chains = q.pop()
            if chains:
                try:
                    self.device.handle(q, chains)
                except Exception:
                    # A device bug must not leave chains in flight (GET_VRING_BASE waits).
                    log.exception("vhost-user: device failed on queue %d", index)
                    for chain in chains:
                        if not chain.done:
                            q.complete(chain, 0)
                continue
            if q.broken is not None:
                if (index, q.epoch) not in self._reported:
                    self._reported.add((index, q.epoch))
                    log.warning("vhost-user: queue %d broken: %s", index, q.broken)
                return
            if not q.enable_notify():
                return
        # A busy guest must not starve the other queues and the socket: come back later.
        self.loop.call_soon(self._process, index)

    def _completed(self, q: Virtqueue) -> None:
        if not self._to_notify:
            self.loop.call_soon(self._flush)
        self._to_notify.add(q)

    def _flush(self) -> None:
        queues, self._to_notify = self._to_notify, set()
        for q in queues:
            q.notify()
            if q.inflight == 0:
                fut = self._drained.pop(q.index, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
        self._release_memory()

    def _release_memory(self) -> None:
        if all(q.outstanding == 0 for q in self.queues):
            self.memory.release_retired()

    # ---- writing and closing -----------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self._hung_up:
            return
        if not self._out:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                log.info("vhost-user: cannot reply: %s", exc)
                self.close()
                return
            data = data[sent:]
            if not data:
                return
            self.loop.add_writer(self.sock.fileno(), self._on_writable)
        self._out += data

    def _on_writable(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self._out[:sent]
        if not self._out:
            self.loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        """Hang up: stop every ring, release memory and fds, reset the device."""
        if self._hung_up:
            return
        self._hung_up = True
        self.loop.remove_reader(self.sock.fileno())
        self.loop.remove_writer(self.sock.fileno())
        self._stop_all()
        self.device.reset()
        self.memory.clear()
        self._release_memory()  # or later, when the last outstanding chain completes
        _close_all(self._fds)
        self._fds = []
        self.sock.close()
        if not self.closed.done():
            self.closed.set_result(None)


def listen(socket_path: str | None = None, fd: int | None = None) -> socket.socket:
    """The listening socket: bind ``socket_path``, or adopt an inherited listening ``fd``."""
    if fd is not None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise LocalError(f"--fd {fd}: {exc.strerror}") from exc
        if sock.family != socket.AF_UNIX or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            raise LocalError(f"--fd {fd} is not a listening unix socket")
    elif socket_path is not None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(socket_path).st_mode):
                os.unlink(socket_path)  # a stale socket from an earlier run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(socket_path)
        except OSError as exc:
            sock.close()
            raise LocalError(f"cannot listen on {socket_path}: {exc.strerror}") from exc
        sock.listen(1)
    else:
        raise LocalError("need a socket path or a listening fd")
    sock.setblocking(False)
    return sock


async def serve(
    device: VirtioDevice,
    listener: socket.socket,
    *,
    reconnect: bool = False,
    on_connection: Callable[[Connection], None] | None = None,
) -> None:
    """Serve front-ends one at a time; return after the first disconnects (like virtiofsd)
    unless ``reconnect``."""
    loop = asyncio.get_running_loop()
    while True:
        sock, _ = await loop.sock_accept(listener)
        log.info("vhost-user: front-end connected")
        conn = Connection(sock, device)
        if on_connection is not None:
            on_connection(conn)
        try:
            await asyncio.shield(conn.closed)
        finally:
            conn.close()
        if not reconnect:
            return
