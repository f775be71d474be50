"""Transport strings as skopeo spells them: oci:, docker-archive:, docker://, dir:, tar:."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import LocalError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPO = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)


@dataclass(frozen=True)
class RegistryRef:
    registry: str  # host[:port] as written (docker.io for the hub)
    repository: str
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        s = f"docker://{self.registry}/{self.repository}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def parse_registry_ref(text: str) -> RegistryRef:
    """``docker://[REGISTRY/]REPO[:TAG][@DIGEST]`` (the ``docker://`` prefix optional)."""
    rest = text.removeprefix("docker://")
    if not rest:
        raise LocalError(f"bad image reference {text!r}")
    digest = None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST.match(digest):
            raise LocalError(f"bad digest in {text!r}: want sha256:<64 hex>")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repo = first, remainder
    else:
        registry, repo = DOCKER_HUB, rest
    tag = None
    name, colon, maybe_tag = repo.rpartition(":")
    if colon and "/" not in maybe_tag:
        repo, tag = name, maybe_tag
        if not _TAG.match(tag):
            raise LocalError(f"bad tag {tag!r} in {text!r}")
    if registry == DOCKER_HUB and "/" not in repo:
        repo = "library/" + repo
    if not _REPO.match(repo):
        raise LocalError(f"bad repository name {repo!r} in {text!r}")
    if tag is None and digest is None:
        tag = "latest"
    return RegistryRef(registry, repo, tag, digest)


@dataclass(frozen=True)
class SourceRef:
    transport: str  # oci | docker-archive | docker | dir | tar
    path: str = ""
    extra: str | None = None  # oci tag / docker-archive ref
    registry: RegistryRef | None = None


def parse_source(text: str) -> SourceRef:
    if text.startswith("docker://"):
        return SourceRef("docker", registry=parse_registry_ref(text))
    transport, sep, rest = text.partition(":")
    if not sep or not rest:
        raise LocalError(
            f"bad source {text!r}: want oci:DIR[:TAG], docker-archive:FILE, "
            "docker://REF, dir:PATH or tar:FILE"
        )
    if transport in ("oci", "docker-archive"):
        if os.path.exists(rest):
            return SourceRef(transport, rest)
        # FILE:REF where REF may hold ':' itself (docker-archive:img.tar:repo:tag)
        for i in (i for i, c in enumerate(rest) if c == ":"):
            if os.path.exists(rest[:i]):
                return SourceRef(transport, rest[:i], rest[i + 1 :] or None)
        path, colon, extra = rest.rpartition(":")
        if colon and path and "/" not in extra:
            return SourceRef(transport, path, extra or None)
        return SourceRef(transport, rest)
    if transport in ("dir", "tar"):
        return SourceRef(transport, rest)
    raise LocalError(f"unknown transport {transport!r} in {text!r}")
