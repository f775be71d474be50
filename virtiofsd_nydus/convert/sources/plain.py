"""``dir:PATH`` and ``tar:FILE``: a directory or a tar (maybe compressed) as a one-layer image."""

from __future__ import annotations

import os
from collections.abc import Iterator

from ...errors import ImageError
from ..direntries import iter_dir
from ..entries import Entry
from ..streams import open_file
from .base import ImageSource, Layer, tar_layer_entries


class DirSource(ImageSource):
    def __init__(self, path: str) -> None:
        self.name = f"dir:{path}"
        if not os.path.isdir(path):
            raise ImageError(f"{self.name}: not a directory")
        self.path = os.fsencode(path)

    def config(self) -> None:
        return None

    def layers(self) -> list[Layer]:
        return [Layer("", None, None, None)]

    def entries(self, index: int, layer: Layer) -> Iterator[Entry]:
        return iter_dir(self.path)


class TarSource(ImageSource):
    def __init__(self, path: str) -> None:
        self.name = f"tar:{path}"
        if not os.path.isfile(path):
            raise ImageError(f"{self.name}: no such file")
        self.path = path

    def config(self) -> None:
        return None

    def layers(self) -> list[Layer]:
        return [Layer("", None, None, None)]

    def entries(self, index: int, layer: Layer) -> Iterator[Entry]:
        with open_file(self.path, self.name) as f:
            yield from tar_layer_entries(f, layer, self.name)
