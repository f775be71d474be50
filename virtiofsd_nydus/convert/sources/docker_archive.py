"""``docker-archive:FILE[:REF]``: the tar ``docker save`` (or skopeo) writes."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from typing import IO, Any

from ...errors import ImageError, LocalError
from ..entries import Entry
from ..manifest import layers_of, parse_json
from ..reference import parse_registry_ref
from .base import ImageSource, Layer, tar_layer_entries

MAX_JSON = 16 << 20


def _normalized(name: str) -> tuple[str, str, str | None] | None:
    """``x/y:v1`` and ``docker.io/x/y:v1`` name the same image."""
    try:
        r = parse_registry_ref(name)
    except LocalError:
        return None
    return r.registry, r.repository, r.tag


class DockerArchiveSource(ImageSource):
    def __init__(self, path: str, ref: str | None) -> None:
        self.name = f"docker-archive:{path}"
        try:
            self._tf = tarfile.open(path, "r:")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise ImageError(f"{self.name}: no such file") from None
        except (tarfile.TarError, OSError) as exc:
            raise ImageError(f"{self.name}: not a docker archive ({exc})") from None
        try:
            manifest = json.loads(self._member("manifest.json"))
        except ValueError:
            raise ImageError(f"{self.name}: manifest.json is not valid JSON") from None
        if not isinstance(manifest, list) or not manifest:
            raise ImageError(f"{self.name}: manifest.json lists no image")
        entry = self._pick(manifest, ref)
        cfg_name = entry.get("Config")
        layer_names = entry.get("Layers")
        if not isinstance(cfg_name, str) or not isinstance(layer_names, list):
            raise ImageError(f"{self.name}: malformed manifest.json")
        cfg_bytes = self._member(cfg_name)
        base = os.path.basename(cfg_name).removesuffix(".json")
        if len(base) == 64 and hashlib.sha256(cfg_bytes).hexdigest() != base:
            raise ImageError(f"{self.name}: config {cfg_name} does not match its digest")
        self._config = parse_json(cfg_bytes, f"{self.name}: config")
        self._names = [str(n) for n in layer_names]
        descs = [{"digest": None, "size": None, "mediaType": ""} for _ in self._names]
        # diff_ids (from the config) are what docker-archive layers are checked against
        self._layers = [
            Layer("", None, None, lay.diff_id) for lay in layers_of(descs, self._config, self.name)
        ]
        tags = entry.get("RepoTags") or []
        self.tag = str(tags[0]).rpartition(":")[2] if tags else None

    def _pick(self, manifest: list[Any], ref: str | None) -> dict[str, Any]:
        if ref is None:
            if len(manifest) > 1:
                raise ImageError(
                    f"{self.name}: several images, name one with docker-archive:FILE:REF"
                )
            return dict(manifest[0])
        if ref.startswith("@") and ref[1:].isdigit():
            i = int(ref[1:])
            if i < len(manifest):
                return dict(manifest[i])
        want = _normalized(ref)
        for m in manifest:
            tags = [str(t) for t in m.get("RepoTags") or []]
            if ref in tags or (want is not None and want in map(_normalized, tags)):
                return dict(m)
        raise ImageError(f"{self.name}: no image {ref!r}")

    def _open(self, name: str) -> IO[bytes]:
        try:
            f = self._tf.extractfile(name.lstrip("/"))
        except KeyError:
            f = None
        except tarfile.TarError as exc:
            raise ImageError(f"{self.name}: {name}: {exc}") from None
        if f is None:
            raise ImageError(f"{self.name}: missing {name}")
        return f

    def _member(self, name: str) -> bytes:
        data = self._open(name).read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise ImageError(f"{self.name}: {name} is too large")
        return data

    def config(self) -> dict[str, Any]:
        return self._config

    def layers(self) -> list[Layer]:
        return self._layers

    def entries(self, index: int, layer: Layer) -> Iterator[Entry]:
        name = self._names[index]
        yield from tar_layer_entries(self._open(name), layer, f"{self.name}: layer {name}")

    def close(self) -> None:
        self._tf.close()
