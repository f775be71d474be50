"""Transport string → ImageSource."""

from __future__ import annotations

from ..auth import Credentials
from ..platform import Platform
from ..reference import parse_source
from .base import ImageSource


def open_source(
    text: str,
    platform: Platform | None = None,
    tls_verify: bool = True,
    creds: Credentials | None = None,
) -> ImageSource:
    ref = parse_source(text)
    want = platform or Platform.host()
    if ref.transport == "oci":
        from .oci import OciLayoutSource

        return OciLayoutSource(ref.path, ref.extra, want)
    if ref.transport == "docker-archive":
        from .docker_archive import DockerArchiveSource

        return DockerArchiveSource(ref.path, ref.extra)
    if ref.transport == "docker":
        from .registry import RegistrySource

        assert ref.registry is not None
        return RegistrySource(ref.registry, want, tls_verify, creds)
    from .plain import DirSource, TarSource

    return DirSource(ref.path) if ref.transport == "dir" else TarSource(ref.path)
