from __future__ import annotations

import os
from pathlib import Path

import pytest

from .images import build_source


@pytest.fixture(scope="session")
def source_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(OCI layout with tag v1, umoci's reference unpack of it)."""
    if os.geteuid() != 0:
        pytest.skip("building the source image needs root (device nodes, owners)")
    return build_source(tmp_path_factory.mktemp("srcimg"))
