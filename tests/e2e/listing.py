"""One listing of a tree, computed by a busybox script in the guest or by Python on the host.

Each path gives one line, path|mode|uid|gid|nlink|size|rdev|mtime|extra, where extra is the
sha256 of a regular file's content or a symlink's target; a hard-link group line per shared
inode follows. Directory sizes and link counts are the host file system's business (ext4
says 4096, an image says what it likes), so they read "D". The guest's inode numbers only
serve to find hard-link groups: they differ between back-ends.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

# %f raw mode (hex), %t/%T major/minor (hex), %Y mtime, %i inode: busybox stat's formats
_STAT = "%n|%f|%u|%g|%h|%s|%t:%T|%Y|%i"

# a shell function for the guest: `listing DIR` prints three sections, unsorted
GUEST_LISTING = f"""
listing() (
  cd "$1" || exit 1
  echo "--stat"
  find . -exec stat -c '{_STAT}' {{}} +
  echo "--sha256"
  find . -type f -exec sha256sum {{}} +
  echo "--links"
  find . -type l | while IFS= read -r p; do echo "$p|$(readlink "$p")"; done
  echo "--end"
)
"""


def parse_guest(text: str) -> list[str]:
    """The guest's three sections → the canonical sorted lines."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("--"):
            current = sections.setdefault(line[2:], [])
        elif current is not None:
            current.append(line)
    if "end" not in sections:
        raise AssertionError(f"incomplete listing:\n{text[-2000:]}")
    extra: dict[str, str] = {}
    for line in sections["sha256"]:
        digest, path = line.split("  ", 1)
        extra[path] = digest
    for line in sections["links"]:
        path, target = line.split("|", 1)
        extra[path] = "-> " + target
    rows = []
    for line in sections["stat"]:
        path, mode, uid, gid, nlink, size, rdev, mtime, ino = line.split("|")
        major, minor = (int(x, 16) for x in rdev.split(":"))
        rows.append(
            (
                path,
                int(mode, 16),
                int(uid),
                int(gid),
                int(nlink),
                int(size),
                major,
                minor,
                int(mtime),
                int(ino),
                extra.get(path, ""),
            )
        )
    return _canonical(rows)


def host_listing(root: Path) -> list[str]:
    """The same lines for a host directory (e.g. umoci's unpack of the source image)."""
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames] if dirpath == str(root) else dirnames + filenames:
            full = os.path.join(dirpath, name) if name else dirpath
            rel = "./" + os.path.relpath(full, root) if full != str(root) else "."
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    extra = hashlib.file_digest(f, "sha256").hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = "-> " + os.readlink(full)
            else:
                extra = ""
            rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            rows.append(
                (
                    rel,
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    st.st_nlink,
                    st.st_size,
                    *rdev,
                    int(st.st_mtime),
                    st.st_ino,
                    extra,
                )
            )
    return _canonical(rows)


Row = tuple[str, int, int, int, int, int, int, int, int, int, str]


def _canonical(rows: list[Row]) -> list[str]:
    rows.sort(key=lambda r: os.fsencode(r[0]))
    groups: dict[int, list[str]] = {}
    out = []
    for path, mode, uid, gid, nlink, size, major, minor, mtime, ino, extra in rows:
        if stat.S_ISDIR(mode):
            nlink_s = size_s = "D"
        else:
            nlink_s, size_s = str(nlink), str(size)
            if nlink > 1:
                groups.setdefault(ino, []).append(path)
        dev = f"{major},{minor}" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "-"
        out.append(f"{path}|{mode:o}|{uid}|{gid}|{nlink_s}|{size_s}|{dev}|{mtime}|{extra}")
    out += sorted("hardlinks " + " ".join(paths) for paths in groups.values())
    return out


def diff_lines(want: list[str], got: list[str], limit: int = 40) -> str:
    """A short unified diff for assertion messages ('' when equal)."""
    import difflib

    lines = list(difflib.unified_diff(want, got, "expected", "got", lineterm="", n=0))
    return "\n".join(lines[:limit])
