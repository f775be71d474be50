"""``docker://REGISTRY/REPO:TAG|@DIGEST``: an image pulled over the distribution API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .. import mediatypes as mt
from ..auth import Credentials
from ..entries import Entry
from ..manifest import resolve
from ..platform import Platform
from ..reference import RegistryRef
from ..registry import RegistryClient
from .base import ImageSource, Layer, check_layer_type, tar_layer_entries


class RegistrySource(ImageSource):
    def __init__(
        self, ref: RegistryRef, want: Platform, tls_verify: bool, creds: Credentials | None
    ) -> None:
        self.name = str(ref)
        self.tag = ref.tag
        self.client = RegistryClient(ref, tls_verify=tls_verify, creds=creds)
        data, ctype, digest = self.client.get_manifest(ref.reference)
        self.resolved = resolve(data, ctype, digest, self._fetch, want, self.name)
        for i, layer in enumerate(self.resolved.layers):
            check_layer_type(layer, f"{self.name}: layer {i + 1}")

    def _fetch(self, desc: dict[str, Any], what: str) -> bytes:
        if desc.get("mediaType") in (*mt.INDEX_TYPES, *mt.MANIFEST_TYPES):
            data, _, _ = self.client.get_manifest(desc["digest"])  # checks the digest
            return data
        return self.client.get_blob(desc, what)

    def config(self) -> dict[str, Any]:
        return self.resolved.config

    def layers(self) -> list[Layer]:
        return self.resolved.layers

    def entries(self, index: int, layer: Layer) -> Iterator[Entry]:
        assert layer.digest is not None
        what = f"{self.name}: layer {index + 1} ({layer.digest})"
        with self.client.open_blob(layer.digest, what) as stream:
            yield from tar_layer_entries(stream, layer, what)

    def close(self) -> None:
        self.client.close()
