"""Snapshot an extracted tree (names, types, modes, owners, sizes, mtimes, links, xattrs,
content digests, hard-link groups) so two extractions can be compared exactly."""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {
        n: os.getxattr(path, n, follow_symlinks=False)
        for n in sorted(names)
        if n.startswith("user.")
    }


def snapshot(root: str, skip_root_mtime: bool = True) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""] if dirpath == root else [*dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            rel = "/" + os.path.relpath(path, root) if name or dirpath != root else "/"
            rel = rel.replace("/.", "/") if rel == "/." else rel
            st = os.lstat(path)
            rec: dict[str, Any] = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime_ns": st.st_mtime_ns,
                "xattrs": _xattrs(path),
            }
            if stat.S_ISREG(st.st_mode):
                rec["size"] = st.st_size
                with open(path, "rb") as f:
                    rec["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                rec["link"] = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["rdev"] = st.st_rdev
            if rel == "/" and skip_root_mtime:
                rec.pop("mtime_ns")
            out[rel] = rec
    for paths in inodes.values():
        for p in paths:
            out[p]["links"] = sorted(paths)
    return out


def diff(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for p in sorted(set(a) | set(b)):
        if p not in a:
            lines.append(f"only in second: {p}")
        elif p not in b:
            lines.append(f"only in first: {p}")
        elif a[p] != b[p]:
            keys = sorted(k for k in set(a[p]) | set(b[p]) if a[p].get(k) != b[p].get(k))
            lines.append(
                f"{p}: " + ", ".join(f"{k}: {a[p].get(k)!r} != {b[p].get(k)!r}" for k in keys)
            )
    return lines
