"""``virtiofsd-nydus``: the vhost-user-fs daemon's command line.

Flags follow virtiofsd's, so Kata can launch us where it launches virtiofsd (its Go
runtime passes ``--syslog --cache=M --shared-dir=D --fd=3 ...``, its Rust runtime
``--socket-path S --shared-dir D --cache M --sandbox none --seccomp none ...``), plus
``--image`` / ``--bootstrap --blob-dir`` to serve a converted image.

``--image`` is verified before anything is served: the manifest (``--manifest-digest`` pins
it) pins image.boot. ``--bootstrap`` is checked only against ``--bootstrap-digest``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import uvloop

from .. import __version__, logs
from .._cli import run_main
from ..convert.imagedir import is_sha256_digest
from ..errors import LocalError
from ..fuse import CachePolicy
from . import service
from .residency import DEFAULT_BUDGET

PROG = "virtiofsd-nydus"

# virtiofsd's -o options we understand (others are an error, as in virtiofsd).
_O_FLAGS = {
    "announce_submounts": "announce_submounts",
    "xattr": "xattr",
    "no_xattr": "no_xattr",
    "readdirplus": None,
    "no_readdirplus": None,
    "writeback": None,
    "no_writeback": None,
    "flock": None,
    "no_flock": None,
    "posix_lock": None,
    "no_posix_lock": None,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="vhost-user-fs back-end: serves a converted container image (chunks "
        "fetched on demand, each verified) or a host directory to a VM's virtio-fs device.",
    )
    p.add_argument("--version", "-V", action="version", version=f"{PROG} {__version__}")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket-path", metavar="SOCK", help="vhost-user socket to listen on")
    where.add_argument("--fd", type=int, metavar="N", help="an already listening socket (Kata)")
    what = p.add_argument_group("what to serve (one of)")
    what.add_argument("--image", type=Path, metavar="IMAGE_DIR", help="made by 'vnydus convert'")
    what.add_argument("--bootstrap", type=Path, metavar="FILE", help="a bootstrap (+ --blob-dir)")
    what.add_argument("--shared-dir", type=Path, metavar="DIR", help="a host directory")
    p.add_argument("--blob-dir", type=Path, metavar="DIR", help="blobs named by sha256 hex")
    p.add_argument(
        "--manifest-digest",
        type=_digest,
        metavar="sha256:HEX",
        help="--image: serve it only if its manifest has this digest (the trust root)",
    )
    p.add_argument(
        "--bootstrap-digest",
        type=_digest,
        metavar="sha256:HEX",
        help="--bootstrap: serve it only if its sha256 is this (without it, you vouch for it)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help=f"chunk cache (default {service.default_cache_dir()})",
    )
    p.add_argument("--tag", help="virtio-fs tag (QEMU and cloud-hypervisor set their own)")
    p.add_argument(
        "--cache",
        choices=[c.value for c in CachePolicy],
        default=None,
        help="guest caching, as virtiofsd (default: always for an image, auto for a directory)",
    )
    p.add_argument("--readonly", action="store_true", help="refuse writes (images always do)")
    p.add_argument("--num-request-queues", type=int, default=1, metavar="N")
    p.add_argument(
        "--thread-pool-size",
        type=int,
        default=0,
        metavar="N",
        help="worker threads for requests (0: serve on the event loop)",
    )
    p.add_argument(
        "--reconnect",
        action="store_true",
        help="after a front-end disconnects, wait for the next one",
    )
    p.add_argument(
        "--bootstrap-rss-budget",
        type=_mib,
        default=DEFAULT_BUDGET >> 20,
        metavar="MIB",
        help="trim the mapped bootstrap from our RSS once file pages grew this much "
        f"(default {DEFAULT_BUDGET >> 20}; 0: never)",
    )
    p.add_argument("--log-level", default="info", choices=sorted(logs.LEVELS))
    p.add_argument("--log-format", choices=["json", "console"], default="console")
    p.add_argument(
        "--print-capabilities",
        action="store_true",
        help="print the vhost-user back-end capabilities (JSON) and exit",
    )
    # Accepted for virtiofsd compatibility.
    p.add_argument("--syslog", action="store_true", help="(accepted; logs go to stderr)")
    p.add_argument("--sandbox", choices=["namespace", "chroot", "none"], default="none")
    p.add_argument("--seccomp", choices=["none", "log", "trap", "kill"], default="none")
    p.add_argument(
        "--inode-file-handles", choices=["never", "prefer", "mandatory"], default="never"
    )
    p.add_argument("--xattr", action="store_true", default=None)
    p.add_argument("--no-xattr", dest="xattr", action="store_false")
    p.add_argument("--announce-submounts", action="store_true")
    p.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPT[,OPT]",
        help="virtiofsd-style options (cache=, xattr, announce_submounts, ...)",
    )
    return p


def _mib(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"want a whole number of MiB, got {text!r}")
    return int(text)


def _digest(text: str) -> str:
    if not is_sha256_digest(text.lower()):
        raise argparse.ArgumentTypeError(f"want sha256:<64 hex digits>, got {text!r}")
    return text.lower()


def _apply_o(args: argparse.Namespace) -> None:
    for group in args.options:
        for opt in filter(None, group.split(",")):
            key, eq, val = opt.partition("=")
            if key == "cache" and eq:
                args.cache = {"none": "never"}.get(val, val)
                if args.cache not in {c.value for c in CachePolicy}:
                    raise LocalError(f"-o cache={val}: want never, metadata, auto or always")
            elif key in ("source", "shared_dir") and eq:
                args.shared_dir = Path(val)
            elif key in _O_FLAGS and not eq:
                if key == "xattr":
                    args.xattr = True
                elif key == "no_xattr":
                    args.xattr = False
            elif key in ("thread_pool_size",) and eq and val.isdigit():
                args.thread_pool_size = int(val)
            else:
                raise LocalError(f"unknown option -o {opt}")


def options(args: argparse.Namespace) -> service.Options:
    _apply_o(args)
    if args.sandbox != "none":
        # We take no privileges beyond what the files need; say so rather than pretend.
        logs_warn = f"--sandbox {args.sandbox} is not implemented; running unsandboxed"
        print(f"{PROG}: warning: {logs_warn}", file=sys.stderr)
    sources = [x for x in (args.image, args.bootstrap, args.shared_dir) if x is not None]
    if len(sources) != 1:
        raise LocalError("give exactly one of --image, --bootstrap, --shared-dir")
    if args.socket_path is None and args.fd is None:
        raise LocalError("give --socket-path SOCK or --fd N")
    if args.bootstrap is not None and args.blob_dir is None:
        raise LocalError("--bootstrap needs --blob-dir")
    if args.image is not None and args.blob_dir is not None:
        raise LocalError("--blob-dir goes with --bootstrap (an --image has its own)")
    if args.manifest_digest is not None and args.image is None:
        raise LocalError("--manifest-digest goes with --image")
    if args.bootstrap_digest is not None and args.bootstrap is None:
        raise LocalError("--bootstrap-digest goes with --bootstrap (--image checks its own)")
    default_cache = "auto" if args.shared_dir is not None else "always"
    return service.Options(
        socket_path=args.socket_path,
        fd=args.fd,
        image_dir=args.image,
        manifest_digest=args.manifest_digest,
        bootstrap=args.bootstrap,
        bootstrap_digest=args.bootstrap_digest,
        blob_dir=args.blob_dir,
        cache_dir=args.cache_dir,
        shared_dir=args.shared_dir,
        readonly=args.readonly,
        xattr=args.xattr is not False,
        cache=CachePolicy(args.cache or default_cache),
        tag=args.tag,
        num_request_queues=args.num_request_queues,
        thread_pool_size=args.thread_pool_size,
        reconnect=args.reconnect,
        bootstrap_budget=(args.bootstrap_rss_budget << 20) or None,
    )


def capabilities() -> str:
    # The vhost-user spec's back-end JSON (what `--print-capabilities` prints for QEMU).
    return json.dumps({"type": "fs", "features": []}, indent=2)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.print_capabilities:
        print(capabilities())
        return 0
    logs.configure(args.log_level, args.log_format)

    def body() -> int:
        svc = service.Service(options(args))
        try:
            listener = svc.listen()
            uvloop.run(svc.run(listener))
        finally:
            svc.close()
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
