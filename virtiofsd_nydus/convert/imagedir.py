"""A converted image directory: an OCI layout whose blob dir doubles as the daemon's.

    OUTPUT_DIR/
      oci-layout, index.json          OCI image layout (skopeo/registries read it)
      blobs/sha256/<hex>              manifest, config, bootstrap layer (tar.gz), data blobs
      image.boot                      the bootstrap itself, for the daemon to map directly

Data blobs are raw chunk concatenations named by their sha256, so ``blobs/sha256`` is
exactly what the daemon's localfs backend wants as its blob directory.

``image.boot`` is a loose file, outside the digest-addressed blobs: the daemon maps it only
after ``ImageDir.open_verified_bootstrap`` has checked it against the manifest (trust chain:
manifest digest → bootstrap layer descriptor → its bootstrap sha256 annotation).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ImageError
from ..format.reader import Bootstrap
from . import mediatypes as mt
from .manifest import check_digest, descriptor, parse_json

BOOTSTRAP_NAME = "image.boot"
_SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def is_sha256_digest(digest: object) -> bool:
    return isinstance(digest, str) and _SHA256_DIGEST.fullmatch(digest) is not None


def sha256_of(f: io.BufferedIOBase) -> str:
    """``sha256:<hex>`` of an open file, by reads (not through a mapping, so the process
    keeps none of it resident)."""
    return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return sha256_of(f)


def _map_open_file(f: io.BufferedIOBase, name: str) -> Bootstrap:
    """Map the very file F refers to (through /proc/self/fd, so a rename between the check
    and the map cannot swap it), naming it NAME in errors."""
    proc = f"/proc/self/fd/{f.fileno()}"
    try:
        bs = Bootstrap.open(proc)
    except ImageError as exc:
        raise ImageError(str(exc).replace(proc, name)) from None
    bs.name = name
    return bs


def open_pinned_bootstrap(
    path: str | os.PathLike[str], digest: str, pinned_by: str = "the caller"
) -> Bootstrap:
    """Map the bootstrap at PATH if its sha256 is DIGEST (which PINNED_BY gave); else a
    one-line ImageError naming the file and both digests."""
    try:
        with open(path, "rb") as f:
            got = sha256_of(f)
            if got != digest:
                raise ImageError(
                    f"{path}: digest mismatch: expected {digest} ({pinned_by}), got {got}"
                )
            return _map_open_file(f, os.fspath(path))
    except OSError as exc:
        raise ImageError(f"cannot read bootstrap {path}: {exc.strerror or exc}") from None


class ImageDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ImageError(f"{self.path}: not a directory")
        self.bootstrap_path = self.path / BOOTSTRAP_NAME
        self.blob_dir = self.path / "blobs" / "sha256"
        self._boot: bytes | None = None  # from the bootstrap layer, when no image.boot
        self._boot_layer: str | None = None  # ... of this digest
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

    def manifest(self, expect: str | None = None) -> dict[str, Any]:
        """The layout's single image manifest (digest-checked); with EXPECT, its digest must
        be that one (a digest the caller trusts, e.g. the daemon's --manifest-digest)."""
        index_path = self.path / "index.json"
        index = parse_json(self._read(index_path), str(index_path))
        manifests = index.get("manifests") or []
        if len(manifests) != 1:
            raise ImageError(f"{self.path}: want one image in index.json, found {len(manifests)}")
        desc = descriptor(manifests[0], str(index_path))
        if expect is not None and desc["digest"] != expect:
            raise ImageError(
                f"{index_path}: manifest digest mismatch: expected {expect}, got {desc['digest']}"
            )
        path = self.blob_path(desc["digest"])
        data = self._read(path)
        check_digest(data, desc["digest"], f"{path} (manifest)")
        return parse_json(data, f"{self.path}: manifest")

    def bootstrap_layer(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """MANIFEST's bootstrap layer descriptor."""
        layers = manifest.get("layers") or []
        boots = [
            d for d in layers if isinstance(d, dict) and d.get("mediaType") == mt.BOOTSTRAP_LAYER
        ]
        if len(boots) != 1 or not isinstance(boots[0].get("digest"), str):
            raise ImageError(f"{self.path}: not a converted image (no bootstrap layer)")
        return boots[0]

    def open_verified_bootstrap(
        self, manifest_digest: str | None = None, *, spill_dir: Path
    ) -> Bootstrap:
        """Map the bootstrap only once the manifest vouches for its bytes.

        The manifest (whose digest must be MANIFEST_DIGEST when given) pins the bootstrap
        layer; the layer's ``ANN_BOOTSTRAP_SHA256`` annotation pins image.boot, which is
        hashed by reads and then mapped through the same open file. Without the annotation
        (converted before it existed) the bootstrap is taken from the digest-checked layer:
        image.boot must equal it, and with no image.boot (an OCI copy by skopeo) it is
        written to an anonymous file in SPILL_DIR (O_TMPFILE: never visible, gone with the
        process) and mapped from there.
        """
        manifest = self.manifest(expect=manifest_digest)
        layer = self.bootstrap_layer(manifest)
        pinned = (layer.get("annotations") or {}).get(mt.ANN_BOOTSTRAP_SHA256)
        if pinned is not None and not is_sha256_digest(pinned):
            raise ImageError(
                f"{self.path}: bad {mt.ANN_BOOTSTRAP_SHA256} annotation {pinned!r} in the manifest"
            )
        if pinned is not None and self._boot is None:
            return open_pinned_bootstrap(
                self.bootstrap_path, pinned, f"the manifest's {mt.ANN_BOOTSTRAP_SHA256}"
            )
        data = self._bootstrap_from_layer(layer)
        from_layer = "sha256:" + hashlib.sha256(data).hexdigest()
        if pinned is not None and from_layer != pinned:
            raise ImageError(
                f"{self.blob_path(layer['digest'])}: bootstrap layer's {mt.BOOTSTRAP_TAR_PATH} "
                f"digest mismatch: expected {pinned}, got {from_layer}"
            )
        if self._boot is None:  # image.boot is there: it must be the layer's bootstrap
            return open_pinned_bootstrap(
                self.bootstrap_path, from_layer, "the manifest's bootstrap layer"
            )
        try:
            with tempfile.TemporaryFile(dir=spill_dir) as f:
                f.write(data)
                f.flush()
                return _map_open_file(
                    f, f"{self.blob_path(layer['digest'])}:{mt.BOOTSTRAP_TAR_PATH}"
                )
        except OSError as exc:
            raise ImageError(f"{spill_dir}: cannot write the bootstrap: {exc.strerror}") from None

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{self.path}: cannot read {path.name}: {exc.strerror}") from None

    def _bootstrap_from_layer(self, layer: dict[str, Any] | None = None) -> bytes:
        """The bootstrap inside the (digest-checked) bootstrap layer LAYER (default: the
        current manifest's). A layer already extracted is not read again."""
        if layer is None:
            layer = self.bootstrap_layer(self.manifest())
        digest = layer["digest"]
        if self._boot is not None and self._boot_layer == digest:
            return self._boot
        path = self.blob_path(digest)
        raw = self._read(path)
        check_digest(raw, digest, f"{path} (bootstrap layer)")
        self._boot_layer = digest
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
