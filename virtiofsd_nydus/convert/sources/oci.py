"""``oci:DIR[:TAG]``: an OCI image layout directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ...errors import ImageError
from .. import mediatypes as mt
from ..entries import Entry
from ..manifest import Resolved, check_digest, descriptor, parse_json, resolve
from ..platform import Platform
from ..streams import open_file
from .base import ImageSource, Layer, tar_layer_entries

MAX_JSON = 16 << 20


class OciLayoutSource(ImageSource):
    def __init__(self, path: str, tag: str | None, want: Platform) -> None:
        self.path = path
        self.name = f"oci:{path}" + (f":{tag}" if tag else "")
        self.tag = tag
        if not os.path.isdir(path):
            raise ImageError(f"{self.name}: no such directory")
        layout = os.path.join(path, "oci-layout")
        if not os.path.isfile(layout):
            raise ImageError(f"{self.name}: not an OCI image layout (no oci-layout file)")
        index = parse_json(self._read(os.path.join(path, "index.json"), "index.json"), "index.json")
        entries = [descriptor(m, f"{self.name}: index.json") for m in index.get("manifests") or []]
        if tag is not None:
            entries = [
                m for m in entries if (m.get("annotations") or {}).get(mt.ANN_REF_NAME) == tag
            ]
            if not entries:
                raise ImageError(f"{self.name}: no image tagged {tag!r}")
        elif not entries:
            raise ImageError(f"{self.name}: index.json lists no image")
        elif len({m["digest"] for m in entries}) > 1 and not any("platform" in m for m in entries):
            names = sorted(
                (m.get("annotations") or {}).get(mt.ANN_REF_NAME, m["digest"]) for m in entries
            )
            raise ImageError(
                f"{self.name}: several images, name one with oci:DIR:TAG ({', '.join(names)})"
            )
        if len(entries) == 1:
            top = entries[0]
            data = self._fetch(top, f"{self.name}: manifest")
            self.resolved: Resolved = resolve(
                data, top.get("mediaType"), top["digest"], self._fetch, want, self.name
            )
        else:  # several tagged alike: treat them as an index
            index = {"mediaType": mt.OCI_INDEX, "manifests": entries}
            import json

            self.resolved = resolve(
                json.dumps(index).encode(), mt.OCI_INDEX, "", self._fetch, want, self.name
            )

    def _read(self, path: str, what: str) -> bytes:
        with open_file(path, f"{self.name}: {what}") as f:
            data = f.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise ImageError(f"{self.name}: {what} is too large")
        return data

    def blob_path(self, digest: str) -> str:
        alg, _, hexd = digest.partition(":")
        if not hexd or "/" in hexd or "/" in alg or hexd.startswith("."):
            raise ImageError(f"{self.name}: bad digest {digest!r}")
        return os.path.join(self.path, "blobs", alg, hexd)

    def _fetch(self, desc: dict[str, Any], what: str) -> bytes:
        data = self._read(self.blob_path(desc["digest"]), what)
        check_digest(data, desc["digest"], what)
        return data

    def config(self) -> dict[str, Any]:
        return self.resolved.config

    def layers(self) -> list[Layer]:
        return self.resolved.layers

    def entries(self, index: int, layer: Layer) -> Iterator[Entry]:
        assert layer.digest is not None
        what = f"{self.name}: layer {index + 1} ({layer.digest})"
        with open_file(self.blob_path(layer.digest), what) as f:
            yield from tar_layer_entries(f, layer, what)
