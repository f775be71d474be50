"""What every source gives the converter: a config, layers, and each layer's entries."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ...errors import ImageError
from ..entries import Entry
from ..mediatypes import NYDUS_BLOB, TAR_LAYER_TYPES
from ..streams import DigestReader, ForwardReader, Readable, decompressed
from ..tarentries import iter_tar


@dataclass(frozen=True, slots=True)
class Layer:
    media_type: str  # "" when the source does not say (docker-archive, tar:)
    digest: str | None  # of the stored (compressed) blob, checked while reading
    size: int | None
    diff_id: str | None  # of the uncompressed tar (config rootfs.diff_ids), checked too


class ImageSource(abc.ABC):
    name: str  # for messages
    tag: str | None = None  # becomes the output's ref.name

    @abc.abstractmethod
    def config(self) -> dict[str, Any] | None:
        """The image config (None: the source has none, e.g. dir:)."""

    @abc.abstractmethod
    def layers(self) -> list[Layer]: ...

    @abc.abstractmethod
    def entries(self, index: int, layer: Layer) -> Iterator[Entry]:
        """The layer's entries in order; digests are checked once it is fully read."""

    def close(self) -> None:  # noqa: B027 - optional
        pass

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_layer_type(layer: Layer, what: str) -> None:
    if layer.media_type == NYDUS_BLOB:
        raise ImageError(f"{what}: already a nydus image (layer type {NYDUS_BLOB})")
    if layer.media_type and layer.media_type not in TAR_LAYER_TYPES:
        raise ImageError(f"{what}: unsupported layer media type {layer.media_type!r}")


def tar_layer_entries(raw: Readable, layer: Layer, what: str) -> Iterator[Entry]:
    """A (maybe compressed) tar layer read once: blob digest, decompression, diff_id, tar."""
    check_layer_type(layer, what)
    blob = DigestReader(raw, layer.digest, what)
    # The blob digest pins the uncompressed bytes too: check the diff_id only without one.
    diff_id = layer.diff_id if layer.digest is None else None
    plain = DigestReader(decompressed(blob, what), diff_id, f"{what} (uncompressed)")
    yield from iter_tar(ForwardReader(plain, what), what)
    plain.finish()
    blob.finish()
    if layer.size is not None and blob.count != layer.size:
        raise ImageError(f"{what}: size {blob.count} differs from the manifest's {layer.size}")
