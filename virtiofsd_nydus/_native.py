"""The only importer of the compiled C core (``virtiofsd_nydus._vnc``).

It checks that the compiled library matches this package, so a stale build is a clear
error instead of a crash; everything else imports ``ffi`` and ``lib`` from here.
"""

from __future__ import annotations

from .errors import LocalError

ABI_VERSION = 1

try:
    from ._vnc import ffi, lib  # type: ignore[import-not-found,unused-ignore]
except ImportError as exc:  # pragma: no cover - depends on the install
    raise LocalError(
        "the C core (virtiofsd_nydus._vnc) is not built: run 'pip install -e .' "
        f"(needs gcc and python3-dev): {exc}"
    ) from exc

if lib.vn_abi_version() != ABI_VERSION:  # pragma: no cover
    raise LocalError(
        f"the C core is stale (ABI {lib.vn_abi_version()}, want {ABI_VERSION}): "
        "rebuild with 'pip install -e .'"
    )

__all__ = ["ffi", "lib"]
