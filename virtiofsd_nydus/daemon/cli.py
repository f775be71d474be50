"""``virtiofsd-nydus``: the vhost-user-fs daemon's command line (virtiofsd-compatible flags)."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from .._cli import NotImplementedCommand, run_main

PROG = "virtiofsd-nydus"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="vhost-user-fs back-end serving a nydus-style image (or a host directory) "
        "to a virtual machine's virtio-fs device.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket-path", metavar="SOCK", help="vhost-user socket to listen on")
    where.add_argument("--fd", type=int, metavar="N", help="an already listening socket (Kata)")
    p.add_argument("--image", metavar="IMAGE_DIR", help="an image made by 'vnydus convert'")
    p.add_argument("--bootstrap", metavar="FILE", help="a bootstrap file (with --blob-dir)")
    p.add_argument("--blob-dir", metavar="DIR", help="directory of blobs named by digest")
    p.add_argument("--tag", help="virtio-fs tag (informational: QEMU takes its own tag=)")
    p.add_argument("--cache", choices=["never", "metadata", "auto", "always"], default="always")
    p.add_argument("--num-request-queues", type=int, default=1, metavar="N")
    p.add_argument("--thread-pool-size", type=int, default=0, metavar="N")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["trace", "debug", "info", "warn", "warning", "error", "off"],
    )
    p.add_argument("--log-format", choices=["json", "console"], default="console")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        raise NotImplementedCommand(
            "serving an image is not built yet (issue: serve an image to a guest)"
        )

    del args
    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
