"""A plain directory → ``Entry`` records (the ``dir:`` source), in sorted order."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from ..errors import ImageError
from .entries import Entry, Kind


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for name in sorted(names):
        try:
            out[os.fsencode(name)] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def iter_dir(root: bytes) -> Iterator[Entry]:
    """Walk ``root`` depth-first in name order; files seen twice become hard links."""
    try:
        st = os.lstat(root)
    except OSError as exc:
        raise ImageError(f"dir:{os.fsdecode(root)}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ImageError(f"dir:{os.fsdecode(root)}: not a directory")
    seen: dict[tuple[int, int], bytes] = {}
    yield _entry(root, b"", st, seen)
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        try:
            names = sorted(os.listdir(full))
        except OSError as exc:
            raise ImageError(f"dir: cannot list {os.fsdecode(full)}: {exc.strerror}") from None
        subdirs = []
        for name in names:
            path = rel + b"/" + name if rel else name
            st = os.lstat(os.path.join(root, path))
            e = _entry(root, path, st, seen)
            if e.kind is Kind.FILE:
                with open(os.path.join(root, path), "rb") as f:
                    e.content = f
                    yield e
                continue
            yield e
            if e.kind is Kind.DIR:
                subdirs.append(path)
        stack.extend(reversed(subdirs))


def _entry(
    root: bytes, path: bytes, st: os.stat_result, seen: dict[tuple[int, int], bytes]
) -> Entry:
    full = os.path.join(root, path) if path else root
    e = Entry(
        path=path,
        kind=Kind.FILE,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        xattrs=_xattrs(full),
    )
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFREG:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in seen:
            e.kind, e.link = Kind.HARDLINK, seen[key]
        else:
            seen[key] = path
            e.size = st.st_size
    elif fmt == stat.S_IFDIR:
        e.kind = Kind.DIR
    elif fmt == stat.S_IFLNK:
        e.kind, e.link = Kind.SYMLINK, os.readlink(full)
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        e.kind = Kind.CHAR if fmt == stat.S_IFCHR else Kind.BLOCK
        e.rdev = st.st_rdev
    elif fmt == stat.S_IFIFO:
        e.kind = Kind.FIFO
    else:
        raise ImageError(f"dir: {os.fsdecode(full)}: sockets cannot be stored in an image")
    return e
