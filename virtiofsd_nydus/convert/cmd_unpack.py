"""``vnydus unpack IMAGE_DIR OUT.tar``: the image's tree as a PAX tar."""

from __future__ import annotations

import argparse
import os
import stat
import tarfile
from typing import IO, cast

from ..errors import LocalError
from .blobread import FileData, LocalBlobs
from .imagedir import ImageDir

_TYPES = {
    stat.S_IFDIR: tarfile.DIRTYPE,
    stat.S_IFREG: tarfile.REGTYPE,
    stat.S_IFLNK: tarfile.SYMTYPE,
    stat.S_IFCHR: tarfile.CHRTYPE,
    stat.S_IFBLK: tarfile.BLKTYPE,
    stat.S_IFIFO: tarfile.FIFOTYPE,
}


def _str(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def unpack(image_dir: str, out_tar: str) -> int:
    img = ImageDir(image_dir)
    tmp = out_tar + ".tmp"
    with img.open_bootstrap() as bs:
        blobs = LocalBlobs(img, bs)
        first_path: dict[int, str] = {}
        count = 0
        try:
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tf:
                for path, ino in bs.walk():
                    node = bs.inode(ino)
                    name = "." if path == b"/" else _str(path.lstrip(b"/"))
                    ti = tarfile.TarInfo(name)
                    ti.mode = stat.S_IMODE(node.mode)
                    ti.uid, ti.gid = node.uid, node.gid
                    ti.mtime = node.mtime_sec
                    ti.pax_headers = {"mtime": f"{node.mtime_sec}.{node.mtime_nsec:09d}"}
                    for k, v in bs.xattrs(ino).items():
                        ti.pax_headers["SCHILY.xattr." + _str(k)] = _str(v)
                    data = None
                    if not node.is_dir and ino in first_path:
                        ti.type, ti.linkname = tarfile.LNKTYPE, first_path[ino]
                    else:
                        first_path.setdefault(ino, name)
                        ti.type = _TYPES.get(stat.S_IFMT(node.mode), tarfile.REGTYPE)
                        if node.is_symlink:
                            ti.linkname = _str(bs.readlink(ino))
                        elif node.is_reg:
                            ti.size = node.size
                            data = FileData(blobs, ino, node.size)
                        elif ti.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                            ti.devmajor, ti.devminor = os.major(node.rdev), os.minor(node.rdev)
                    tf.addfile(ti, cast(IO[bytes] | None, data))
                    count += 1
            os.replace(tmp, out_tar)
        except OSError as exc:
            raise LocalError(f"{out_tar}: {exc.strerror or exc}") from None
        finally:
            blobs.close()
            if os.path.exists(tmp):
                os.unlink(tmp)
    return count


def run(args: argparse.Namespace) -> int:
    n = unpack(args.image_dir, args.output_tar)
    print(f"wrote {n} entries to {args.output_tar}")
    return 0
