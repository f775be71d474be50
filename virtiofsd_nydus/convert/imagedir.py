"""A converted image directory: an OCI layout whose blob dir doubles as the daemon's.

    OUTPUT_DIR/
      oci-layout, index.json          OCI image layout (skopeo/registries read it)
      blobs/sha256/<hex>              manifest, config, bootstrap layer (tar.gz), data blobs
      image.boot                      the bootstrap itself, for the daemon to map directly

Data blobs are raw chunk concatenations named by their sha256, so ``blobs/sha256`` is
exactly what the daemon's localfs backend wants as its blob directory.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path
from typing import Any

from ..errors import ImageError
from ..format.reader import Bootstrap
from . import mediatypes as mt
from .manifest import check_digest, descriptor, parse_json

BOOTSTRAP_NAME = "image.boot"


class ImageDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ImageError(f"{self.path}: not a directory")
        self.bootstrap_path = self.path / BOOTSTRAP_NAME
        self.blob_dir = self.path / "blobs" / "sha256"
        self._boot: bytes | None = None
        if not self.bootstrap_path.is_file():
            # an OCI layout copied by other tools (skopeo): take it from the bootstrap layer
            if not (self.path / "index.json").is_file():
                raise ImageError(f"{self.path}: not a converted image (no {BOOTSTRAP_NAME})")
            self._boot = self._bootstrap_from_layer()

    def open_bootstrap(self) -> Bootstrap:
        if self._boot is not None:
            return Bootstrap.from_bytes(self._boot)
        return Bootstrap.open(self.bootstrap_path)

    def bootstrap_bytes(self) -> bytes:
        return self._boot if self._boot is not None else self.bootstrap_path.read_bytes()

    def manifest(self) -> dict[str, Any]:
        """The layout's single image manifest (digest-checked)."""
        index = parse_json(self._read(self.path / "index.json"), f"{self.path}/index.json")
        manifests = index.get("manifests") or []
        if len(manifests) != 1:
            raise ImageError(f"{self.path}: want one image in index.json, found {len(manifests)}")
        desc = descriptor(manifests[0], f"{self.path}/index.json")
        data = self._read(self.blob_path(desc["digest"]))
        check_digest(data, desc["digest"], f"{self.path}: manifest")
        return parse_json(data, f"{self.path}: manifest")

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{self.path}: cannot read {path.name}: {exc.strerror}") from None

    def _bootstrap_from_layer(self) -> bytes:
        layers = self.manifest().get("layers") or []
        boots = [
            d for d in layers if isinstance(d, dict) and d.get("mediaType") == mt.BOOTSTRAP_LAYER
        ]
        if len(boots) != 1 or not isinstance(boots[0].get("digest"), str):
            raise ImageError(f"{self.path}: not a converted image (no bootstrap layer)")
        raw = self._read(self.blob_path(boots[0]["digest"]))
        check_digest(raw, boots[0]["digest"], f"{self.path}: bootstrap layer")
        try:
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw))) as tf:
                f = tf.extractfile(mt.BOOTSTRAP_TAR_PATH)
                if f is None:
                    raise KeyError(mt.BOOTSTRAP_TAR_PATH)
                return f.read()
        except (OSError, EOFError, KeyError, tarfile.TarError) as exc:
            raise ImageError(f"{self.path}: bad bootstrap layer ({exc})") from None

    def blob_path(self, digest: str) -> Path:
        alg, _, hexd = digest.partition(":")
        if alg != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise ImageError(f"{self.path}: bad blob digest {digest!r}")
        return self.blob_dir / hexd
