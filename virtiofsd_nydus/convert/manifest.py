"""Manifests, indexes and configs: parse, check digests, pick by platform."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ImageError
from . import mediatypes as mt
from .platform import Platform, pick
from .sources.base import Layer

Fetch = Callable[[dict[str, Any], str], bytes]  # descriptor, what → verified bytes


def check_digest(data: bytes, digest: str, what: str) -> None:
    alg, _, hexd = digest.partition(":")
    if alg not in ("sha256", "sha512") or not hexd:
        raise ImageError(f"{what}: unsupported digest {digest!r}")
    got = hashlib.new(alg, data).hexdigest()
    if got != hexd:
        raise ImageError(f"{what}: digest mismatch: expected {digest}, got {alg}:{got}")


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ImageError(f"{what}: not a JSON object")
    return obj


def descriptor(obj: Any, what: str) -> dict[str, Any]:
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("digest"), str)
        or not isinstance(obj.get("size"), int)
    ):
        raise ImageError(f"{what}: malformed descriptor")
    return obj


@dataclass
class Resolved:
    manifest: dict[str, Any]
    manifest_digest: str
    config: dict[str, Any]
    layers: list[Layer]


def resolve(
    data: bytes, media_type: str | None, digest: str, fetch: Fetch, want: Platform, what: str
) -> Resolved:
    """From a manifest or index's bytes to the image for ``want``."""
    for _ in range(3):  # index → (nested index →) manifest
        obj = parse_json(data, what)
        kind = obj.get("mediaType") or media_type
        if kind in mt.INDEX_TYPES or (kind is None and "manifests" in obj):
            entries = obj.get("manifests")
            if not isinstance(entries, list) or not entries:
                raise ImageError(f"{what}: empty image index")
            desc = descriptor(pick([descriptor(m, what) for m in entries], want, what), what)
            data = fetch(desc, f"{what}: manifest {desc['digest']}")
            media_type, digest = desc.get("mediaType"), desc["digest"]
            continue
        if kind not in mt.MANIFEST_TYPES and not (kind is None and "layers" in obj):
            raise ImageError(f"{what}: unsupported manifest media type {kind!r}")
        return _image(obj, digest, fetch, what)
    raise ImageError(f"{what}: image indexes nested too deep")


def _image(manifest: dict[str, Any], digest: str, fetch: Fetch, what: str) -> Resolved:
    cdesc = descriptor(manifest.get("config"), f"{what}: config")
    if cdesc.get("mediaType") not in (*mt.CONFIG_TYPES, None):
        raise ImageError(f"{what}: unsupported config media type {cdesc.get('mediaType')!r}")
    config = parse_json(fetch(cdesc, f"{what}: config"), f"{what}: config")
    raw_layers = manifest.get("layers")
    if not isinstance(raw_layers, list):
        raise ImageError(f"{what}: manifest has no layer list")
    descs = [descriptor(d, f"{what}: layer") for d in raw_layers]
    return Resolved(manifest, digest, config, layers_of(descs, config, what))


def layers_of(descs: list[dict[str, Any]], config: dict[str, Any], what: str) -> list[Layer]:
    diff_ids = (config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(descs):
        diff_ids = [None] * len(descs)  # cannot pair them up: rely on the blob digests
    return [
        Layer(str(d.get("mediaType", "")), d["digest"], d["size"], diff)
        for d, diff in zip(descs, diff_ids, strict=True)
    ]
