"""A minimal writer for "newc" cpio archives, the format the kernel unpacks as initramfs.

Written in Python so the archive's owners and modes don't depend on who runs the build
(no fakeroot), and so a per-run archive can be appended to the base one: the kernel
unpacks concatenated archives in order, later files replacing earlier ones.
"""

from __future__ import annotations

import stat

_TRAILER = "TRAILER!!!"


class CpioWriter:
    def __init__(self) -> None:
        self._out = bytearray()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes) -> None:
        encoded = name.encode() + b"\0"
        # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        self._ino += 1
        self._out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        self._pad()
        self._out += data
        self._pad()

    def _pad(self) -> None:
        self._out += b"\0" * (-len(self._out) % 4)

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, b"")

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        """The archive bytes, trailer included, padded to 512 bytes like cpio(1) does."""
        self._entry(_TRAILER, 0, b"")
        self._out += b"\0" * (-len(self._out) % 512)
        return bytes(self._out)
