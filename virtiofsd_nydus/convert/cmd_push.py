"""``vnydus push IMAGE_DIR docker://REF``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .auth import Credentials
from .push import push_image


def run(args: argparse.Namespace) -> int:
    push_image(
        Path(args.image_dir),
        args.dest,
        tls_verify=args.dest_tls_verify == "true",
        creds=Credentials.parse(args.dest_creds) if args.dest_creds else None,
    )
    return 0
