"""`python -m tests.vm [--rootfs]`: fetch and build every guest asset now, print where they are.

Useful to warm the cache (e.g. in a CI image) before running the vm tests.
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.vm.accel import chosen_accel
from tests.vm.assets import busybox_static, guest_kernel, virtiofsd_cmd, virtiofsd_version
from tests.vm.cache import cache_dir
from tests.vm.rootfs import debian_rootfs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vm", description=__doc__)
    parser.add_argument("--rootfs", action="store_true", help="also build the Debian rootfs")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        print(f"cache:      {cache_dir()}")
        print(f"virtiofsd:  {virtiofsd_version()}: {' '.join(virtiofsd_cmd())}")
        print(f"kernel:     {guest_kernel()}")
        print(f"busybox:    {busybox_static()}")
        if args.rootfs:
            print(f"rootfs:     {debian_rootfs()}")
        print(f"accel:      {chosen_accel()}")
    except RuntimeError as exc:
        print(f"tests.vm: error: {exc}", file=sys.stderr)
        return 1
    print(f"ready in {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
