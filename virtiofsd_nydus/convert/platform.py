"""``os/arch[/variant]`` platforms and picking a manifest from an index by one."""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass
from typing import Any

from ..errors import ImageError, LocalError

_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "i686": "386",
    "ppc64le": "ppc64le",
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise LocalError(f"bad platform {text!r}: want os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> Platform:
        m = _platform.machine()
        return cls("linux", _ARCH.get(m, m))

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, desc_platform: dict[str, Any]) -> bool:
        if (
            desc_platform.get("os") != self.os
            or desc_platform.get("architecture") != self.architecture
        ):
            return False
        return self.variant is None or desc_platform.get("variant") == self.variant


def pick(manifests: list[dict[str, Any]], want: Platform, what: str) -> dict[str, Any]:
    """The index entry for ``want``; the only entry when no entry says its platform."""
    with_platform = [m for m in manifests if isinstance(m.get("platform"), dict)]
    if not with_platform and len(manifests) == 1:
        return manifests[0]
    for m in with_platform:
        if want.matches(m["platform"]):
            return m
    have = ", ".join(
        sorted(
            str(Platform(p.get("os", "?"), p.get("architecture", "?"), p.get("variant")))
            for p in (m["platform"] for m in with_platform)
        )
    )
    raise ImageError(f"{what}: no image for platform {want} (have: {have or 'none'})")
