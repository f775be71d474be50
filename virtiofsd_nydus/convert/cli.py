"""``vnydus``: image tools (convert, inspect, check, unpack, ls)."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from .._cli import NotImplementedCommand, run_main

PROG = "vnydus"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Convert OCI images to chunked, "
        "verified, lazily loadable images and inspect them.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    c = sub.add_parser(
        "convert",
        help="convert an image (oci:, docker-archive:, docker://, "
        "dir:, tar:) into an OCI layout holding a bootstrap and blobs",
    )
    c.add_argument("source")
    c.add_argument("output_dir")
    i = sub.add_parser("inspect", help="summarise an image, or show one path")
    i.add_argument("image_dir")
    i.add_argument("path", nargs="?")
    k = sub.add_parser("check", help="verify every chunk and the Merkle tree")
    k.add_argument("image_dir")
    u = sub.add_parser("unpack", help="rebuild the image's tree as a tar")
    u.add_argument("image_dir")
    u.add_argument("output_tar")
    ls = sub.add_parser("ls", help="bill of materials, without reading any blob")
    ls.add_argument("image_dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        raise NotImplementedCommand(f"'{args.command}' (issue: the image format and converter)")

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
