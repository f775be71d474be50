"""``vnydus``: image tools (convert, push, inspect, check, unpack, ls)."""

from __future__ import annotations

import argparse
import sys

from .. import __version__, logs
from .._cli import run_main
from ..errors import LocalError

PROG = "vnydus"


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = units.get(t[-1:], 1)
    try:
        return int(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Convert OCI images to chunked, "
        "verified, lazily loadable images and inspect them.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--log-level", default="warning", choices=sorted(logs.LEVELS))
    p.add_argument("--log-format", choices=["json", "console"], default="console")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    c = sub.add_parser(
        "convert",
        help="convert an image (oci:, docker-archive:, docker://, "
        "dir:, tar:) into an OCI layout holding a bootstrap and blobs",
    )
    c.add_argument(
        "source", help="oci:DIR[:TAG] | docker-archive:FILE | docker://REF | dir:PATH | tar:FILE"
    )
    c.add_argument("output_dir")
    c.add_argument(
        "--chunk-size", type=_size, default="1M", help="power of two, 4K..16M (default 1M)"
    )
    c.add_argument("--compression-level", type=int, default=3, help="zstd level (default 3)")
    c.add_argument(
        "--chunk-dict",
        nargs="+",
        default=[],
        metavar="IMAGE_DIR",
        help="reuse these images' chunks",
    )
    c.add_argument(
        "--platform", help="os/arch[/variant] to pick from an index (default: this host)"
    )
    c.add_argument(
        "--tls-verify",
        default="true",
        choices=["true", "false"],
        help="false: skip TLS checks, allow http",
    )
    c.add_argument("--src-creds", metavar="USER:PASS")
    c.add_argument("--push", metavar="docker://REF", help="push the result to a registry")
    c.add_argument("--dest-tls-verify", default="true", choices=["true", "false"])
    c.add_argument("--dest-creds", metavar="USER:PASS")
    c.add_argument("--jobs", type=int, default=None, help="hash/compress threads (default: CPUs)")
    c.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    ps = sub.add_parser("push", help="push a converted image to a registry (only missing blobs)")
    ps.add_argument("image_dir")
    ps.add_argument("dest", metavar="docker://REF")
    ps.add_argument("--dest-tls-verify", default="true", choices=["true", "false"])
    ps.add_argument("--dest-creds", metavar="USER:PASS")
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
    logs.configure(args.log_level, args.log_format)

    def body() -> int:
        if args.command == "convert":
            from .cmd_convert import run
        elif args.command == "push":
            from .cmd_push import run
        elif args.command == "inspect":
            from .cmd_inspect import run
        elif args.command == "check":
            from .cmd_check import run
        elif args.command == "unpack":
            from .cmd_unpack import run
        else:
            from .cmd_ls import run
        try:
            return run(args)
        except OSError as exc:  # disk full, permissions...: a user's problem, not a bug
            where = f"{exc.filename}: " if exc.filename else ""
            raise LocalError(f"{where}{exc.strerror or exc}") from None

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
