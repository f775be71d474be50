"""``vnydus inspect IMAGE_DIR [PATH]``: an image summary, or one path's metadata and chunks."""

from __future__ import annotations

import argparse
import stat

from ..errors import ImageError
from ..format.reader import Bootstrap
from .cmd_ls import TYPE_CHAR
from .imagedir import ImageDir


def _summary(bs: Bootstrap) -> list[str]:
    kinds: dict[str, int] = {}
    seen: set[int] = set()
    file_bytes = referenced = 0
    for _, ino in bs.walk():
        if ino in seen:
            continue
        seen.add(ino)
        n = bs.inode(ino)
        k = TYPE_CHAR.get(stat.S_IFMT(n.mode), "?")
        kinds[k] = kinds.get(k, 0) + 1
        if n.is_reg:
            file_bytes += n.size
            referenced += sum(bs.chunk(ci).uncompressed_size for _, ci in bs.file_chunks(ino))
    unique = stored = 0
    for i in range(bs.chunk_count):
        c = bs.chunk(i)
        unique += c.uncompressed_size
        stored += c.compressed_size
    names = {
        "-": "files",
        "d": "dirs",
        "l": "symlinks",
        "c": "char devs",
        "b": "block devs",
        "p": "fifos",
    }
    lines = [
        f"chunk size     {bs.chunk_size}",
        f"root digest    {bs.root_digest.hex()}",
        "inodes         " + ", ".join(f"{kinds[k]} {names.get(k, k)}" for k in sorted(kinds)),
        f"file bytes     {file_bytes:,} (holes/zeros: {file_bytes - referenced:,})",
        f"chunks         {bs.chunk_count} unique, {unique:,} B uncompressed, {stored:,} B stored",
        f"dedup ratio    {referenced / unique if unique else 1:.3f} (referenced/unique bytes)",
        f"compression    {unique / stored if stored else 1:.3f}",
        f"blobs          {len(bs.blobs)}",
    ]
    lines += [
        f"  {b.digest}  {b.compressed_size:,} B ({b.uncompressed_size:,} B data)" for b in bs.blobs
    ]
    return lines


def _path(bs: Bootstrap, path: str) -> list[str]:
    ino = bs.resolve(path.encode("utf-8", "surrogateescape"))
    if ino is None:
        raise ImageError(f"{path}: no such file in the image")
    n = bs.inode(ino)
    lines = [
        f"path    {path}",
        f"inode   {ino} ({TYPE_CHAR.get(stat.S_IFMT(n.mode), '?')}) "
        f"mode {stat.S_IMODE(n.mode):04o} "
        f"uid {n.uid} gid {n.gid} nlink {n.nlink}",
        f"size    {n.size}",
        f"mtime   {n.mtime_sec}.{n.mtime_nsec:09d}",
        f"digest  {n.digest.hex()}",
    ]
    if n.rdev:
        lines.append(f"rdev    {n.rdev:#x}")
    if n.is_symlink:
        lines.append(f"target  {bs.readlink(ino).decode('utf-8', 'backslashreplace')}")
    for k, v in bs.xattrs(ino).items():
        lines.append(f"xattr   {k.decode('utf-8', 'backslashreplace')}={v!r}")
    if n.is_reg:
        for off, ci in bs.file_chunks(ino):
            c = bs.chunk(ci)
            blob = bs.blobs[c.blob_index].digest
            lines.append(
                f"chunk   @{off} #{ci} {c.digest.hex()[:16]} {c.uncompressed_size} B -> "
                f"{c.compressed_size} B {'zstd' if c.compressed else 'raw'} "
                f"in {blob[:19]}+{c.compressed_offset}"
            )
    return lines


def run(args: argparse.Namespace) -> int:
    img = ImageDir(args.image_dir)
    with img.open_bootstrap() as bs:
        lines = _path(bs, args.path) if args.path else _summary(bs)
    print("\n".join(lines))
    return 0
