"""A converted image directory: an OCI layout whose blob dir doubles as the daemon's.

    OUTPUT_DIR/
      oci-layout, index.json          OCI image layout (skopeo/registries read it)
      blobs/sha256/<hex>              manifest, config, bootstrap layer (tar.gz), data blobs
      image.boot                      the bootstrap itself, for the daemon to map directly

Data blobs are raw chunk concatenations named by their sha256, so ``blobs/sha256`` is
exactly what the daemon's localfs backend wants as its blob directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ImageError
from ..format.reader import Bootstrap

BOOTSTRAP_NAME = "image.boot"


class ImageDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ImageError(f"{self.path}: not a directory")
        self.bootstrap_path = self.path / BOOTSTRAP_NAME
        if not self.bootstrap_path.is_file():
            raise ImageError(f"{self.path}: not a converted image (no {BOOTSTRAP_NAME})")
        self.blob_dir = self.path / "blobs" / "sha256"

    def open_bootstrap(self) -> Bootstrap:
        return Bootstrap.open(self.bootstrap_path)

    def blob_path(self, digest: str) -> Path:
        alg, _, hexd = digest.partition(":")
        if alg != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise ImageError(f"{self.path}: bad blob digest {digest!r}")
        return self.blob_dir / hexd
