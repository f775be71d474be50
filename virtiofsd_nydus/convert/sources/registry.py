"""``docker://REGISTRY/REPO:TAG|@DIGEST``: an image pulled over the distribution API.

Layers are applied one after another, but the network need not wait: while layer i is being
chunked, layer i+1 downloads (digest-checked) into a temporary file. The first layer streams.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import mediatypes as mt
from ..auth import Credentials
from ..entries import Entry
from ..manifest import resolve
from ..platform import Platform
from ..reference import RegistryRef
from ..registry import RegistryClient
from ..streams import READ_SIZE, DigestReader
from .base import ImageSource, Layer, check_layer_type, tar_layer_entries


class RegistrySource(ImageSource):
    def __init__(
        self, ref: RegistryRef, want: Platform, tls_verify: bool, creds: Credentials | None
    ) -> None:
        self.name = str(ref)
        self.tag = ref.tag
        self.client = RegistryClient(ref, tls_verify=tls_verify, creds=creds)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="layer-download")
        self._ahead: dict[int, Future[Path]] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
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

    def _what(self, index: int, layer: Layer) -> str:
        return f"{self.name}: layer {index + 1} ({layer.digest})"

    def _download(self, index: int, layer: Layer) -> Path:
        assert layer.digest is not None and self._tmp is not None
        what = self._what(index, layer)
        path = Path(self._tmp.name) / str(index)
        with self.client.open_blob(layer.digest, what) as stream, open(path, "wb") as f:
            r = DigestReader(stream, layer.digest, what)
            while block := r.read(READ_SIZE):
                f.write(block)
            r.finish()
        return path

    def entries(self, index: int, layer: Layer) -> Iterator[Entry]:
        assert layer.digest is not None
        layers = self.resolved.layers
        if index + 1 < len(layers) and index + 1 not in self._ahead:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="vnydus-layers-")
            self._ahead[index + 1] = self._pool.submit(self._download, index + 1, layers[index + 1])
        what = self._what(index, layer)
        fut = self._ahead.pop(index, None)
        if fut is None:
            with self.client.open_blob(layer.digest, what) as stream:
                yield from tar_layer_entries(stream, layer, what)
            return
        path = fut.result()
        try:
            with open(path, "rb") as f:
                yield from tar_layer_entries(f, layer, what)
        finally:
            path.unlink()

    def close(self) -> None:
        for fut in self._ahead.values():
            fut.cancel()
        self._pool.shutdown(wait=True)
        if self._tmp is not None:
            self._tmp.cleanup()
        self.client.close()
