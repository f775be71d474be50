"""The FUSE request server, sans-I/O: request bytes in, reply bytes out.

``Server(fs).handle(request, max_reply)`` decodes fuse_in_header, validates the op's
arguments, calls the ``FileSystem`` and encodes the reply through ``_ok``/``_error``.
Dispatch is a list indexed by opcode holding (handler, name), so counters and logs get
the op name for free. Nothing the guest sends can make ``handle`` raise: a malformed
request gets EINVAL, an unknown op ENOSYS, a failing file system its errno (or EIO).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

from ..errors import BackendError, GuestError, ImageError
from . import abi
from .abi import Opcode
from .filesystem import Attr, Context, Entry, FileRange, FileSystem, SetAttr, Timeouts

log = logging.getLogger(__name__)

# What every session asks of the guest (ANDed with what it offers): parallel, async,
# big requests, READDIRPLUS, cached symlinks. The file system adds its own wishes in
# FileSystem.init (PseudoFS: SUBMOUNTS).
DEFAULT_WANT: Final = (
    abi.ASYNC_READ
    | abi.PARALLEL_DIROPS
    | abi.MAX_PAGES
    | abi.DO_READDIRPLUS
    | abi.READDIRPLUS_AUTO
    | abi.CACHE_SYMLINKS
    | abi.INIT_EXT
)
DEFAULT_MAX_PAGES: Final = 256  # 1 MiB requests, like virtiofsd
# Smaller READs are cheaper copied through bytes than gathered with preadv (measured).
VECTORED_MIN: Final = 32 << 10
# Ask the guest for plenty of in-flight background requests (readahead, async reads).
MAX_BACKGROUND: Final = 0xFFFF
CONGESTION_THRESHOLD: Final = 0xFFFF * 3 // 4

_NO_REPLY_OPS: Final = frozenset({Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT})
_HDR: Final = abi.IN_HEADER.size
_OUT: Final = abi.OUT_HEADER.size
_ERRNO_MAX: Final = 4095
_MAX_OFFSET: Final = (1 << 63) - 1


class Request:
    """One decoded request: the header's fields plus the op's argument bytes."""

    __slots__ = (
        "body",
        "gid",
        "max_reply",
        "nodeid",
        "opcode",
        "pid",
        "uid",
        "unique",
        "vectored",
    )

    def __init__(
        self,
        opcode: int,
        unique: int,
        nodeid: int,
        uid: int,
        gid: int,
        pid: int,
        body: memoryview,
        max_reply: int,
        vectored: bool = False,
    ) -> None:
        self.vectored = vectored  # the caller can take a Vectored READ reply
        self.opcode = opcode
        self.unique = unique
        self.nodeid = nodeid
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.body = body
        self.max_reply = max_reply

    @property
    def ctx(self) -> Context:
        return Context(self.uid, self.gid, self.pid)


class Vectored(NamedTuple):
    """A READ reply whose data is still to be gathered: bytes, or ranges of host files."""

    unique: int
    parts: list[bytes | FileRange]


class ReplyTarget(Protocol):
    """Where ``Server.handle_into`` finds a request and puts its reply: a vhost
    descriptor chain (``vhost.vring.Chain``), or a test's buffer."""

    @property
    def write_len(self) -> int: ...
    def read(self) -> bytes: ...
    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int: ...
    def write_buffers(self, offset: int, size: int) -> list[memoryview]: ...


Handler = Callable[[Request], bytes | Vectored | None]


def _error(unique: int, code: int) -> bytes:
    return abi.OUT_HEADER.pack(_OUT, -code, unique)


class Server:
    """Serves one FUSE session (INIT .. DESTROY, or the next INIT) over a FileSystem.

    Not thread-safe by itself beyond what the file system guarantees: a daemon running
    requests on several threads needs a file system whose methods are safe to call
    concurrently (the image fs is).
    """

    def __init__(
        self,
        fs: FileSystem,
        *,
        max_pages: int = DEFAULT_MAX_PAGES,
        vectored_min: int = VECTORED_MIN,
    ) -> None:
        if not 1 <= max_pages <= 0xFFFF:
            raise ValueError(f"max_pages {max_pages} out of range 1..65535")
        self.fs = fs
        self.max_pages = max_pages
        self.max_write = max_pages * abi.PAGE_SIZE
        self.vectored_min = vectored_min  # handle_into gathers READs of at least this size
        self.initialized = False
        self.proto_minor = 0  # the guest's minor version once initialized
        self.flags = 0  # the negotiated 64-bit INIT flags
        # Per-opcode counters for metrics; index = opcode, last slot = unknown opcodes.
        self.calls = [0] * (abi.MAX_OPCODE + 2)
        self.errors = [0] * (abi.MAX_OPCODE + 2)
        self.malformed = 0  # requests whose header could not be decoded
        self._warned: set[int] = set()
        self._table = self._build_table()

    # --- public --------------------------------------------------------------------------
    def handle(self, request: bytes | bytearray | memoryview, max_reply: int) -> bytes | None:
        """Answer one request. ``max_reply``: bytes the guest gave for the reply.

        Returns the reply (fuse_out_header + payload), or None when the op gets no reply
        (FORGET, BATCH_FORGET, INTERRUPT) or the guest left no room for even a header.
        """
        reply = self._dispatch(request, max_reply, False)
        assert not isinstance(reply, Vectored)
        return reply

    def handle_into(self, target: ReplyTarget) -> int:
        """Answer the request held in ``target`` by writing the reply into it; returns the
        reply's length (0: no reply). READ data that sits in a file system's cache files
        goes straight into guest memory with preadv, never through Python bytes."""
        reply = self._dispatch(target.read(), target.write_len, True)
        if reply is None:
            return 0
        if not isinstance(reply, Vectored):
            return target.write(reply)
        pos = _OUT
        try:
            for part in reply.parts:
                if isinstance(part, FileRange):
                    n = _preadv(part, target.write_buffers(pos, part.length))
                    want = part.length
                else:
                    n = target.write(part, pos)
                    want = len(part)
                if n != want:
                    raise OSError(errno.EIO, f"{n} of {want} bytes copied")
                pos += n
        except OSError as e:
            log.error("fuse READ: gathering the reply failed: %s", e.strerror or e)
            self.errors[Opcode.READ] += 1
            return target.write(_error(reply.unique, errno.EIO))
        target.write(abi.OUT_HEADER.pack(pos, 0, reply.unique), 0)
        return pos

    def _dispatch(
        self, request: bytes | bytearray | memoryview, max_reply: int, vectored: bool
    ) -> bytes | Vectored | None:
        if len(request) < _HDR:
            self.malformed += 1
            return _error(0, errno.EINVAL) if max_reply >= _OUT else None
        length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = abi.IN_HEADER.unpack_from(
            request
        )
        slot = opcode if opcode <= abi.MAX_OPCODE else abi.MAX_OPCODE + 1
        self.calls[slot] += 1
        no_reply = opcode in _NO_REPLY_OPS
        if max_reply < _OUT and not no_reply:
            self.malformed += 1
            return None
        # Extensions (security context, supplementary groups) trail the op's arguments;
        # we negotiate none of them, so they are cut off and ignored.
        end = length - extlen * 8
        if length > len(request) or end < _HDR:
            self.malformed += 1
            self.errors[slot] += 1
            return None if no_reply else _error(unique, errno.EINVAL)
        body = memoryview(request)[_HDR:end]
        entry: tuple[Handler | None, str] | None = (
            self._table[opcode] if opcode <= abi.MAX_OPCODE else None
        )
        if entry is None or entry[0] is None:
            self.errors[slot] += 1
            self._warn_unsupported(opcode)
            return None if no_reply else _error(unique, errno.ENOSYS)
        handler = entry[0]
        if not self.initialized and opcode != Opcode.INIT:
            self.errors[slot] += 1
            return None if no_reply else _error(unique, errno.EIO)
        req = Request(opcode, unique, nodeid, uid, gid, pid, body, max_reply, vectored)
        try:
            return handler(req)
        except OSError as e:
            code = e.errno if e.errno and 0 < e.errno <= _ERRNO_MAX else errno.EIO
        except GuestError as e:
            log.debug("fuse %s: bad request: %s", entry[1], e)
            code = errno.EINVAL
        except (ImageError, BackendError) as e:
            log.error("fuse %s ino %d: %s", entry[1], nodeid, e)
            code = errno.EIO
        except Exception:
            log.exception("fuse %s ino %d: internal error", entry[1], nodeid)
            code = errno.EIO
        self.errors[slot] += 1
        return None if no_reply else _error(unique, code)

    def reset(self) -> None:
        """The transport went away (disconnect, device reset): end the session, if any."""
        if self.initialized:
            self.fs.destroy()
            self.initialized = False

    def stats(self) -> dict[str, tuple[int, int]]:
        """{op name: (requests, error replies)} for ops seen at least once."""
        out: dict[str, tuple[int, int]] = {}
        for op in range(abi.MAX_OPCODE + 2):
            if self.calls[op]:
                name = self._table[op][1] if op <= abi.MAX_OPCODE else "UNKNOWN"
                out[name] = (self.calls[op], self.errors[op])
        return out

    # --- dispatch table -------------------------------------------------------------------
    def _build_table(self) -> list[tuple[Handler | None, str]]:
        handlers: dict[Opcode, Handler] = {
            Opcode.INIT: self._init,
            Opcode.DESTROY: self._destroy,
            Opcode.INTERRUPT: self._interrupt,
            Opcode.LOOKUP: self._lookup,
            Opcode.FORGET: self._forget,
            Opcode.BATCH_FORGET: self._batch_forget,
            Opcode.GETATTR: self._getattr,
            Opcode.READLINK: self._readlink,
            Opcode.OPEN: self._open,
            Opcode.READ: self._read,
            Opcode.STATFS: self._statfs,
            Opcode.RELEASE: self._release,
            Opcode.FSYNC: self._fsync,
            Opcode.GETXATTR: self._getxattr,
            Opcode.LISTXATTR: self._listxattr,
            Opcode.FLUSH: self._flush,
            Opcode.OPENDIR: self._opendir,
            Opcode.READDIR: self._readdir,
            Opcode.READDIRPLUS: self._readdirplus,
            Opcode.RELEASEDIR: self._releasedir,
            Opcode.FSYNCDIR: self._fsyncdir,
            Opcode.ACCESS: self._access,
            Opcode.LSEEK: self._lseek,
            Opcode.SYNCFS: self._syncfs,
            Opcode.SETATTR: self._setattr,
            Opcode.SYMLINK: self._symlink,
            Opcode.MKNOD: self._mknod,
            Opcode.MKDIR: self._mkdir,
            Opcode.UNLINK: self._unlink,
            Opcode.RMDIR: self._rmdir,
            Opcode.RENAME: self._rename,
            Opcode.RENAME2: self._rename2,
            Opcode.LINK: self._link,
            Opcode.WRITE: self._write,
            Opcode.SETXATTR: self._setxattr,
            Opcode.REMOVEXATTR: self._removexattr,
            Opcode.CREATE: self._create,
            Opcode.TMPFILE: self._tmpfile,
            Opcode.FALLOCATE: self._fallocate,
            Opcode.COPY_FILE_RANGE: self._copy_file_range,
        }
        table: list[tuple[Handler | None, str]] = [
            (None, f"OP{i}") for i in range(abi.MAX_OPCODE + 1)
        ]
        for op in Opcode:
            table[op] = (handlers.get(op), op.name)
        return table

    def _warn_unsupported(self, opcode: int) -> None:
        if opcode not in self._warned and len(self._warned) < 64:
            self._warned.add(opcode)
            log.info("fuse: unsupported opcode %d, answering ENOSYS", opcode)

    # --- replies -----------------------------------------------------------------------------
    def _ok(self, req: Request, payload: bytes | bytearray = b"") -> bytes:
        n = _OUT + len(payload)
        if n > req.max_reply:
            # Only a misbehaving guest gives a reply buffer smaller than the op's reply.
            raise GuestError(f"reply of {n} bytes exceeds the {req.max_reply}-byte buffer")
        return abi.OUT_HEADER.pack(n, 0, req.unique) + payload

    def _entry(self, req: Request, e: Entry) -> bytes:
        return self._ok(req, _pack_entry(e))

    def _attr(self, req: Request, attr: Attr, t: Timeouts) -> bytes:
        return self._ok(req, abi.ATTR_OUT.pack(t.attr_sec, t.attr_nsec, 0, *attr))

    # --- session ops -------------------------------------------------------------------------
    def _init(self, req: Request) -> bytes:
        major, minor, max_readahead, flags = _args(abi.INIT_IN_COMPAT, req.body)
        if major < abi.KERNEL_VERSION:
            log.warning("fuse INIT: guest speaks %d.%d, need 7.%d+", major, minor, 27)
            raise OSError(errno.EPROTO, "unsupported FUSE major version")
        if major > abi.KERNEL_VERSION:
            # The guest will retry INIT with our major version.
            return self._ok(
                req,
                abi.INIT_OUT.pack(
                    abi.KERNEL_VERSION, abi.KERNEL_MINOR_VERSION, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
                ),
            )
        if minor < abi.MIN_KERNEL_MINOR_VERSION:
            log.error(
                "fuse INIT: guest speaks 7.%d, need 7.%d+", minor, abi.MIN_KERNEL_MINOR_VERSION
            )
            raise OSError(errno.EPROTO, "unsupported FUSE minor version")
        offered = flags
        if flags & abi.INIT_EXT and len(req.body) >= abi.INIT_IN.size:
            offered |= abi.INIT_IN.unpack_from(req.body)[4] << 32
        if self.initialized:  # a remount or reboot of the guest: a fresh session
            log.info("fuse: new INIT, resetting the session")
            self.fs.destroy()
            self.initialized = False
        wanted = DEFAULT_WANT | self.fs.init(offered)
        enabled = wanted & offered
        self.flags = enabled
        self.proto_minor = minor
        self.initialized = True
        lo, hi = abi.split_flags(enabled)
        if not enabled & abi.INIT_EXT:
            hi = 0
        log.info("fuse: session 7.%d, flags %#x, max_write %d", minor, enabled, self.max_write)
        return self._ok(
            req,
            abi.INIT_OUT.pack(
                abi.KERNEL_VERSION,
                abi.KERNEL_MINOR_VERSION,
                max_readahead,
                lo,
                MAX_BACKGROUND,
                CONGESTION_THRESHOLD,
                self.max_write,
                1,  # time_gran: nanosecond timestamps
                self.max_pages,
                0,  # map_alignment: no DAX
                hi,
                0,  # max_stack_depth: no passthrough backing files
            ),
        )

    def _destroy(self, req: Request) -> bytes:
        self.fs.destroy()
        self.initialized = False
        return self._ok(req)

    def _interrupt(self, req: Request) -> None:
        # Requests never wait on anything the guest could interrupt; nothing to do.
        return None

    # --- read-side ops ----------------------------------------------------------------------
    def _lookup(self, req: Request) -> bytes:
        return self._entry(req, self.fs.lookup(req.nodeid, _name(req.body)))

    def _forget(self, req: Request) -> None:
        if len(req.body) >= abi.FORGET_IN.size:
            (nlookup,) = abi.FORGET_IN.unpack_from(req.body)
            self.fs.forget(req.nodeid, nlookup)
        return None

    def _batch_forget(self, req: Request) -> None:
        body = req.body
        if len(body) < abi.BATCH_FORGET_IN.size:
            return None
        count, _ = abi.BATCH_FORGET_IN.unpack_from(body)
        count = min(count, (len(body) - abi.BATCH_FORGET_IN.size) // abi.FORGET_ONE.size)
        items = [
            abi.FORGET_ONE.unpack_from(body, abi.BATCH_FORGET_IN.size + i * abi.FORGET_ONE.size)
            for i in range(count)
        ]
        self.fs.batch_forget(items)
        return None

    def _getattr(self, req: Request) -> bytes:
        flags, _, fh = _args(abi.GETATTR_IN, req.body)
        attr, t = self.fs.getattr(req.nodeid, fh if flags & abi.GETATTR_FH else None)
        return self._attr(req, attr, t)

    def _readlink(self, req: Request) -> bytes:
        return self._ok(req, self.fs.readlink(req.nodeid))

    def _open(self, req: Request) -> bytes:
        flags, _ = _args(abi.OPEN_IN, req.body)
        fh, oflags = self.fs.open(req.nodeid, flags)
        return self._ok(req, abi.OPEN_OUT.pack(fh, oflags, 0))

    def _read(self, req: Request) -> bytes | Vectored:
        fh, offset, size, _, _, _, _ = _args(abi.READ_IN, req.body)
        if offset > _MAX_OFFSET:
            raise OSError(errno.EINVAL, "offset out of range")
        size = min(size, req.max_reply - _OUT, self.max_write)
        if req.vectored and size >= self.vectored_min:
            parts = self.fs.read_ranges(req.nodeid, fh, offset, size)
            if parts is not None:
                total = sum(p.length if isinstance(p, FileRange) else len(p) for p in parts)
                if total > size:
                    raise RuntimeError(f"file system planned {total} bytes for a {size}-byte read")
                return Vectored(req.unique, parts)
        data = self.fs.read(req.nodeid, fh, offset, size) if size > 0 else b""
        if len(data) > size:
            raise RuntimeError(f"file system returned {len(data)} bytes for a {size}-byte read")
        return self._ok(req, data)

    def _statfs(self, req: Request) -> bytes:
        return self._ok(req, abi.STATFS_OUT.pack(*self.fs.statfs(req.nodeid), 0))

    def _release(self, req: Request) -> bytes:
        fh, flags, _, _ = _args(abi.RELEASE_IN, req.body)
        self.fs.release(req.nodeid, fh, flags)
        return self._ok(req)

    def _releasedir(self, req: Request) -> bytes:
        fh, _, _, _ = _args(abi.RELEASE_IN, req.body)
        self.fs.releasedir(req.nodeid, fh)
        return self._ok(req)

    def _flush(self, req: Request) -> bytes:
        fh, _, _, lock_owner = _args(abi.FLUSH_IN, req.body)
        self.fs.flush(req.nodeid, fh, lock_owner)
        return self._ok(req)

    def _fsync(self, req: Request) -> bytes:
        fh, flags, _ = _args(abi.FSYNC_IN, req.body)
        self.fs.fsync(req.nodeid, fh, bool(flags & abi.FSYNC_FDATASYNC))
        return self._ok(req)

    def _fsyncdir(self, req: Request) -> bytes:
        fh, flags, _ = _args(abi.FSYNC_IN, req.body)
        self.fs.fsyncdir(req.nodeid, fh, bool(flags & abi.FSYNC_FDATASYNC))
        return self._ok(req)

    def _syncfs(self, req: Request) -> bytes:
        self.fs.syncfs(req.nodeid)
        return self._ok(req)

    def _getxattr(self, req: Request) -> bytes:
        size, _ = _args(abi.GETXATTR_IN, req.body)
        name = _xattr_name(req.body[abi.GETXATTR_IN.size :])
        return self._sized(req, size, self.fs.getxattr(req.nodeid, name))

    def _listxattr(self, req: Request) -> bytes:
        size, _ = _args(abi.GETXATTR_IN, req.body)
        names = self.fs.listxattr(req.nodeid)
        return self._sized(req, size, b"".join(n + b"\0" for n in names))

    def _sized(self, req: Request, size: int, value: bytes) -> bytes:
        """getxattr/listxattr: size 0 asks for the length, a short buffer gets ERANGE."""
        if size == 0:
            return self._ok(req, abi.GETXATTR_OUT.pack(len(value), 0))
        if len(value) > size:
            raise OSError(errno.ERANGE, "buffer too small")
        return self._ok(req, value)

    def _access(self, req: Request) -> bytes:
        mask, _ = _args(abi.ACCESS_IN, req.body)
        self.fs.access(req.nodeid, mask, req.uid, req.gid)
        return self._ok(req)

    def _lseek(self, req: Request) -> bytes:
        fh, offset, whence, _ = _args(abi.LSEEK_IN, req.body)
        if whence not in (abi.SEEK_DATA, abi.SEEK_HOLE) or offset > _MAX_OFFSET:
            raise OSError(errno.EINVAL, "bad lseek")
        return self._ok(req, abi.LSEEK_OUT.pack(self.fs.lseek(req.nodeid, fh, offset, whence)))

    # --- directories --------------------------------------------------------------------------
    def _opendir(self, req: Request) -> bytes:
        flags, _ = _args(abi.OPEN_IN, req.body)
        fh, oflags = self.fs.opendir(req.nodeid, flags)
        return self._ok(req, abi.OPEN_OUT.pack(fh, oflags, 0))

    def _readdir(self, req: Request) -> bytes:
        fh, offset, size, _, _, _, _ = _args(abi.READ_IN, req.body)
        room = min(size, req.max_reply - _OUT, self.max_write)
        out = bytearray()
        pack, head, pad = abi.DIRENT.pack, abi.DIRENT.size, _PAD
        it = self.fs.readdir(req.nodeid, fh, offset)
        try:
            for d in it:
                name = d.name
                n = len(name)
                rec = (head + n + 7) & ~7
                if len(out) + rec > room:
                    break
                out += pack(d.ino, d.off, n, d.type)
                out += name
                out += pad[rec - head - n]
        finally:
            _close(it)
        return self._ok(req, out)

    def _readdirplus(self, req: Request) -> bytes:
        fh, offset, size, _, _, _, _ = _args(abi.READ_IN, req.body)
        room = min(size, req.max_reply - _OUT, self.max_write)
        parts: list[bytes] = []
        used = 0
        parent = req.nodeid
        fs = self.fs
        it = fs.readdir(parent, fh, offset)
        try:
            for d in it:
                n = len(d.name)
                rec = abi.direntplus_size(n)
                if used + rec > room:
                    break
                # Only now, knowing the record fits, does the entry count as a lookup.
                try:
                    e = fs.readdirplus_entry(parent, d)
                except FileNotFoundError:
                    continue  # gone since readdir listed it (a mutable file system)
                except OSError:
                    if parts:
                        break  # send what we have; the guest asks again from there
                    raise
                if e is None:
                    head = abi.DIRENTPLUS.pack(
                        0, 0, 0, 0, 0, 0, *_ZERO_ATTR, d.ino, d.off, n, d.type
                    )
                else:
                    t = e.timeouts
                    head = abi.DIRENTPLUS.pack(
                        e.ino,
                        e.generation,
                        t.entry_sec,
                        t.attr_sec,
                        t.entry_nsec,
                        t.attr_nsec,
                        *e.attr,
                        d.ino,
                        d.off,
                        n,
                        d.type,
                    )
                parts.append(head)
                parts.append(d.name + _PAD[rec - abi.DIRENTPLUS.size - n])
                used += rec
        finally:
            _close(it)
        return self._ok(req, b"".join(parts))

    # --- mutations (decoded fully; a read-only file system answers EROFS) ------------------
    def _setattr(self, req: Request) -> bytes:
        (valid, _, fh, size, _, atime, mtime, _, atimensec, mtimensec, _, mode, _, uid, gid, _) = (
            _args(abi.SETATTR_IN, req.body)
        )
        values = SetAttr(
            mode,
            uid,
            gid,
            size,
            atime * 1_000_000_000 + atimensec,
            mtime * 1_000_000_000 + mtimensec,
        )
        attr, t = self.fs.setattr(req.nodeid, valid, values, fh if valid & abi.FATTR_FH else None)
        return self._attr(req, attr, t)

    def _symlink(self, req: Request) -> bytes:
        name, target = _cstrings(req.body, 2)
        _check_name(name)
        if not target or len(target) > _PATH_MAX:
            raise GuestError("bad symlink target")
        return self._entry(req, self.fs.symlink(req.ctx, req.nodeid, name, target))

    def _mknod(self, req: Request) -> bytes:
        mode, rdev, umask, _ = _args(abi.MKNOD_IN, req.body)
        name = _name(req.body[abi.MKNOD_IN.size :])
        return self._entry(req, self.fs.mknod(req.ctx, req.nodeid, name, mode, rdev, umask))

    def _mkdir(self, req: Request) -> bytes:
        mode, umask = _args(abi.MKDIR_IN, req.body)
        name = _name(req.body[abi.MKDIR_IN.size :])
        return self._entry(req, self.fs.mkdir(req.ctx, req.nodeid, name, mode, umask))

    def _unlink(self, req: Request) -> bytes:
        self.fs.unlink(req.nodeid, _name(req.body))
        return self._ok(req)

    def _rmdir(self, req: Request) -> bytes:
        self.fs.rmdir(req.nodeid, _name(req.body))
        return self._ok(req)

    def _rename(self, req: Request) -> bytes:
        (newdir,) = _args(abi.RENAME_IN, req.body)
        old, new = _cstrings(req.body[abi.RENAME_IN.size :], 2)
        _check_name(old)
        _check_name(new)
        self.fs.rename(req.nodeid, old, newdir, new, 0)
        return self._ok(req)

    def _rename2(self, req: Request) -> bytes:
        newdir, flags, _ = _args(abi.RENAME2_IN, req.body)
        old, new = _cstrings(req.body[abi.RENAME2_IN.size :], 2)
        _check_name(old)
        _check_name(new)
        self.fs.rename(req.nodeid, old, newdir, new, flags)
        return self._ok(req)

    def _link(self, req: Request) -> bytes:
        (oldnodeid,) = _args(abi.LINK_IN, req.body)
        name = _name(req.body[abi.LINK_IN.size :])
        return self._entry(req, self.fs.link(oldnodeid, req.nodeid, name))

    def _write(self, req: Request) -> bytes:
        fh, offset, size, _, _, flags, _ = _args(abi.WRITE_IN, req.body)
        data = req.body[abi.WRITE_IN.size :]
        if size > len(data) or size > self.max_write or offset > _MAX_OFFSET:
            raise GuestError("write size or offset out of range")
        n = self.fs.write(req.nodeid, fh, offset, data[:size], flags)
        return self._ok(req, abi.WRITE_OUT.pack(n, 0))

    def _setxattr(self, req: Request) -> bytes:
        st = abi.SETXATTR_IN if self.flags & abi.SETXATTR_EXT else abi.SETXATTR_IN_COMPAT
        size, flags = _args(st, req.body)[:2]
        rest = bytes(req.body[st.size :])
        nul = rest.find(b"\0")
        if nul < 0 or len(rest) - nul - 1 < size:
            raise GuestError("setxattr: truncated name or value")
        name = _check_xattr_name(rest[:nul])
        self.fs.setxattr(req.nodeid, name, rest[nul + 1 : nul + 1 + size], flags)
        return self._ok(req)

    def _removexattr(self, req: Request) -> bytes:
        self.fs.removexattr(req.nodeid, _xattr_name(req.body))
        return self._ok(req)

    def _create(self, req: Request) -> bytes:
        flags, mode, umask, _ = _args(abi.CREATE_IN, req.body)
        name = _name(req.body[abi.CREATE_IN.size :])
        e, fh, oflags = self.fs.create(req.ctx, req.nodeid, name, flags, mode, umask)
        return self._ok(req, _pack_entry(e) + abi.OPEN_OUT.pack(fh, oflags, 0))

    def _tmpfile(self, req: Request) -> bytes:
        flags, mode, umask, _ = _args(abi.CREATE_IN, req.body)
        e, fh, oflags = self.fs.tmpfile(req.ctx, req.nodeid, flags, mode, umask)
        return self._ok(req, _pack_entry(e) + abi.OPEN_OUT.pack(fh, oflags, 0))

    def _fallocate(self, req: Request) -> bytes:
        fh, offset, length, mode, _ = _args(abi.FALLOCATE_IN, req.body)
        if offset > _MAX_OFFSET or length > _MAX_OFFSET:
            raise GuestError("fallocate range out of range")
        self.fs.fallocate(req.nodeid, fh, offset, length, mode)
        return self._ok(req)

    def _copy_file_range(self, req: Request) -> bytes:
        fh_in, off_in, nodeid_out, fh_out, off_out, length, flags = _args(
            abi.COPY_FILE_RANGE_IN, req.body
        )
        if off_in > _MAX_OFFSET or off_out > _MAX_OFFSET:
            raise GuestError("copy_file_range offset out of range")
        n = self.fs.copy_file_range(
            req.nodeid, fh_in, off_in, nodeid_out, fh_out, off_out, length, flags
        )
        return self._ok(req, abi.WRITE_OUT.pack(n, 0))


# --- decoding helpers (all raise GuestError on malformed input) ------------------------------
_PAD: Final = tuple(b"\0" * i for i in range(8))
_ZERO_ATTR: Final = (0,) * 16
_PATH_MAX: Final = 4096


def _args(st: struct.Struct, body: memoryview) -> tuple[int, ...]:
    if len(body) < st.size:
        raise GuestError(f"arguments truncated: {len(body)} < {st.size} bytes")
    return st.unpack_from(body)


def _cstrings(body: memoryview, count: int) -> list[bytes]:
    """``count`` NUL-terminated strings from the start of ``body``."""
    data = bytes(body)
    out: list[bytes] = []
    pos = 0
    for _ in range(count):
        nul = data.find(b"\0", pos)
        if nul < 0:
            raise GuestError("string argument not NUL-terminated")
        out.append(data[pos:nul])
        pos = nul + 1
    return out


def _check_name(name: bytes) -> bytes:
    if not name or b"/" in name or name in (b".", b".."):
        raise GuestError(f"invalid name {name[:64]!r}")
    if len(name) > abi.NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, "name too long")
    return name


def _name(body: memoryview) -> bytes:
    """A directory entry name: one NUL-terminated path component."""
    # Names are short: find the NUL in at most NAME_MAX + 1 bytes without copying the rest.
    data = bytes(body[: abi.NAME_MAX + 2])
    nul = data.find(b"\0")
    if nul < 0:
        if len(data) > abi.NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        raise GuestError("name not NUL-terminated")
    return _check_name(data[:nul])


def _check_xattr_name(name: bytes) -> bytes:
    if not name:
        raise GuestError("empty xattr name")
    if len(name) > abi.NAME_MAX:
        raise OSError(errno.ERANGE, "xattr name too long")
    return name


def _xattr_name(body: memoryview) -> bytes:
    data = bytes(body[: abi.NAME_MAX + 2])
    nul = data.find(b"\0")
    if nul < 0:
        if len(data) > abi.NAME_MAX:
            raise OSError(errno.ERANGE, "xattr name too long")
        raise GuestError("xattr name not NUL-terminated")
    return _check_xattr_name(data[:nul])


def _pack_entry(e: Entry) -> bytes:
    t = e.timeouts
    return abi.ENTRY_OUT.pack(
        e.ino, e.generation, t.entry_sec, t.attr_sec, t.entry_nsec, t.attr_nsec, *e.attr
    )


_IOV_MAX: Final = os.sysconf("SC_IOV_MAX")


def _preadv(r: FileRange, bufs: list[memoryview]) -> int:
    """preadv in groups of IOV_MAX buffers (a chain may be scattered more finely)."""
    done = 0
    for i in range(0, len(bufs), _IOV_MAX):
        group = bufs[i : i + _IOV_MAX]
        got = os.preadv(r.fd, group, r.offset + done)
        done += got
        if got != sum(len(b) for b in group):
            break
    return done


def _close(it: object) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()
