"""Session fixtures: the corner-case OCI image (source, reference unpack, conversion) and
the Debian rootfs converted to an image. Built once per session; each costs seconds."""

from __future__ import annotations

import os

import pytest

from tests.e2e.images import Converted, SourceImage, build_e2e_source, convert
from tests.vm.rootfs import debian_rootfs


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("building the source image needs root (device nodes, owners)")


@pytest.fixture(scope="session")
def e2e_source(tmp_path_factory: pytest.TempPathFactory) -> SourceImage:
    _need_root()
    return build_e2e_source(tmp_path_factory.mktemp("e2esrc"))


@pytest.fixture(scope="session")
def e2e_image(e2e_source: SourceImage, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """The source converted with the default chunk size (1 MiB)."""
    out = tmp_path_factory.mktemp("e2eimg") / "image"
    return convert(f"oci:{e2e_source.layout}:v1", out)


@pytest.fixture(scope="session")
def rootfs_image(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """Debian 12 minbase + python3, converted with `vnydus convert dir:ROOTFS`."""
    _need_root()
    out = tmp_path_factory.mktemp("rootimg") / "image"
    return convert(f"dir:{debian_rootfs()}", out)
