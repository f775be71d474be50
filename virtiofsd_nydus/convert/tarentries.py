"""Tar members → ``Entry`` records, streaming (PAX, GNU, sparse, xattrs, ns mtimes)."""

from __future__ import annotations

import base64
import os
import tarfile
import urllib.parse
from collections.abc import Iterator
from typing import IO, cast

import structlog

from ..errors import ImageError
from .entries import Entry, Kind, normalize
from .streams import ForwardReader

log = structlog.get_logger(__name__)

_U32 = 0xFFFFFFFF
_MAX_NS = 1 << 62  # ~146 years either side of 1970, well inside the format's range
_XATTR_SCHILY = "SCHILY.xattr."
_XATTR_LIBARCHIVE = "LIBARCHIVE.xattr."


def _fsencode(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    """The PAX mtime keeps nanoseconds; tarfile turns it into a float, which does not."""
    text = ti.pax_headers.get("mtime")
    if text:
        neg = text.startswith("-")
        whole, _, frac = text.lstrip("-").partition(".")
        try:
            ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
        except ValueError:
            ns = int(ti.mtime * 1_000_000_000)
        return -ns if neg else ns
    return int(ti.mtime) * 1_000_000_000


def _xattrs(ti: tarfile.TarInfo) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in ti.pax_headers.items():
        if key.startswith(_XATTR_SCHILY):
            out[_fsencode(key[len(_XATTR_SCHILY) :])] = _fsencode(value)
        elif key.startswith(_XATTR_LIBARCHIVE):
            name = urllib.parse.unquote_to_bytes(key[len(_XATTR_LIBARCHIVE) :])
            try:
                out[name] = base64.b64decode(value)
            except ValueError:
                raise ImageError(f"bad LIBARCHIVE.xattr value for {ti.name!r}") from None
    return out


class _Member:
    """A plain member's data read straight off the archive stream (tarfile's own file
    object adds two more copies of every byte)."""

    def __init__(self, stream: ForwardReader, start: int, size: int) -> None:
        self._s = stream
        self._start = start
        self._end = start + size

    def read(self, n: int = -1, /) -> bytes:
        left = self._end - self._s.tell()
        if n < 0 or n > left:
            n = left
        data = self._s.read(n)
        if len(data) != n:
            raise tarfile.ReadError("unexpected end of data")
        return data

    def seek(self, pos: int, whence: int = 0, /) -> int:
        self._s.seek(self._start + pos)
        return pos


def _entry(tf: tarfile.TarFile, ti: tarfile.TarInfo, stream: ForwardReader) -> Entry | None:
    path = normalize(_fsencode(ti.name))
    if not (0 <= ti.uid <= _U32 and 0 <= ti.gid <= _U32):
        raise ImageError(f"{ti.name!r}: owner {ti.uid}:{ti.gid} out of range")
    if ti.isdev() and not (0 <= ti.devmajor <= _U32 and 0 <= ti.devminor <= _U32):
        raise ImageError(f"{ti.name!r}: device number out of range")
    e = Entry(
        path=path,
        kind=Kind.FILE,
        mode=ti.mode & 0o7777,
        uid=ti.uid,
        gid=ti.gid,
        mtime_ns=max(-_MAX_NS, min(_MAX_NS, _mtime_ns(ti))),
        xattrs=_xattrs(ti),
    )
    if ti.isreg():
        e.size = ti.size
        sparse = getattr(ti, "sparse", None)
        if sparse is not None:
            e.data_ranges = [(int(o), int(n)) for o, n in sparse]
            e.content = tf.extractfile(ti)
        else:
            e.content = _Member(stream, ti.offset_data, ti.size)
    elif ti.isdir():
        e.kind = Kind.DIR
    elif ti.issym():
        e.kind = Kind.SYMLINK
        e.link = _fsencode(ti.linkname)
    elif ti.islnk():
        e.kind = Kind.HARDLINK
        e.link = normalize(_fsencode(ti.linkname))
    elif ti.ischr() or ti.isblk():
        e.kind = Kind.CHAR if ti.ischr() else Kind.BLOCK
        e.rdev = os.makedev(ti.devmajor, ti.devminor)
    elif ti.isfifo():
        e.kind = Kind.FIFO
    else:
        log.warning("skipping tar member of unsupported type", name=ti.name, type=ti.type)
        return None
    return e


def iter_tar(stream: ForwardReader, what: str) -> Iterator[Entry]:
    """Yield a layer's entries in archive order. Each entry's content is readable until the
    next one is requested. Raises ImageError for a corrupt or truncated archive."""
    try:
        tf = tarfile.TarFile(
            fileobj=cast(IO[bytes], stream), mode="r", encoding="utf-8", errors="surrogateescape"
        )
    except tarfile.ReadError as exc:
        raise ImageError(f"{what}: not a tar archive ({exc})") from None
    try:
        while True:
            ti = tf.next()
            if ti is None:
                break
            tf.members.clear()  # type: ignore[attr-defined]  # links are ours: drop headers
            e = _entry(tf, ti, stream)
            if e is not None:
                yield e
    except (tarfile.TarError, EOFError) as exc:
        raise ImageError(f"{what}: corrupt tar ({exc})") from None
    # tarfile treats a truncated or garbled header as the end: insist on a real one
    if stream.last_read.strip(b"\0") or len(stream.last_read) < tarfile.BLOCKSIZE:
        raise ImageError(f"{what}: truncated or corrupt tar (no end-of-archive marker)")
