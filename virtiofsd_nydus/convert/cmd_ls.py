"""``vnydus ls IMAGE_DIR``: a bill of materials from the bootstrap alone (no blob read).

One line per path: type, mode, uid:gid, size, content digest (the inode's Merkle digest:
for a file it covers its chunk digests and metadata), path. Tab-separated.
"""

from __future__ import annotations

import argparse
import stat
import sys

from .imagedir import ImageDir

TYPE_CHAR = {
    stat.S_IFDIR: "d",
    stat.S_IFREG: "-",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}


def run(args: argparse.Namespace) -> int:
    img = ImageDir(args.image_dir)
    out = sys.stdout
    with img.open_bootstrap() as bs:
        for path, ino in bs.walk():
            n = bs.inode(ino)
            kind = TYPE_CHAR.get(stat.S_IFMT(n.mode), "?")
            name = path.decode("utf-8", "backslashreplace")
            if n.is_symlink:
                name += " -> " + bs.readlink(ino).decode("utf-8", "backslashreplace")
            out.write(
                f"{kind}\t{stat.S_IMODE(n.mode):04o}\t{n.uid}:{n.gid}\t{n.size}\t"
                f"{n.digest.hex()}\t{name}\n"
            )
    return 0
