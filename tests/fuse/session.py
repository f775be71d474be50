"""A guest-side view of one FUSE session: typed calls over raw request bytes."""

from __future__ import annotations

from virtiofsd_nydus.fuse import abi
from virtiofsd_nydus.fuse.abi import Opcode
from virtiofsd_nydus.fuse.filesystem import FileSystem
from virtiofsd_nydus.fuse.server import Server

from .wire import (
    BIG,
    ENTRY_NODEID,
    KERNEL_FLAGS,
    Reply,
    attr_out,
    cstr,
    entry_out,
    init_body,
    parse,
    read_in,
    request,
)


class Session:
    def __init__(self, fs: FileSystem) -> None:
        self.fs = fs
        self.srv = Server(fs)
        r = parse(self.srv.handle(request(Opcode.INIT, init_body(38, KERNEL_FLAGS)), BIG))
        assert r.error == 0

    def call(self, opcode: int, body: bytes = b"", nodeid: int = 1, **kw: int) -> Reply:
        return parse(self.srv.handle(request(opcode, body, nodeid=nodeid, **kw), BIG))

    def lookup(self, path: bytes) -> int:
        ino = 1
        for part in path.split(b"/"):
            r = self.call(Opcode.LOOKUP, cstr(part), nodeid=ino)
            assert r.error == 0, (path, part, r.error)
            ino = entry_out(r.payload)[ENTRY_NODEID]
        return ino

    def getattr(self, ino: int) -> dict[str, int]:
        r = self.call(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0), nodeid=ino)
        assert r.error == 0, r.error
        return attr_out(r.payload)

    def open(self, ino: int, flags: int = 0) -> int:
        r = self.call(Opcode.OPEN, abi.OPEN_IN.pack(flags, 0), nodeid=ino)
        assert r.error == 0, r.error
        return int(abi.OPEN_OUT.unpack(r.payload)[0])

    def read(self, ino: int, offset: int, size: int, fh: int = 0) -> Reply:
        return self.call(Opcode.READ, read_in(fh, offset, size), nodeid=ino)

    def lseek(self, ino: int, offset: int, whence: int, fh: int = 0) -> int:
        r = self.call(Opcode.LSEEK, abi.LSEEK_IN.pack(fh, offset, whence, 0), nodeid=ino)
        return -r.error if r.error else int(abi.LSEEK_OUT.unpack(r.payload)[0])
