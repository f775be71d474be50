"""Read and verify file data of a converted image from its local blob directory."""

from __future__ import annotations

import os

from ..errors import ImageError
from ..format.reader import Bootstrap
from ..storage.chunks import BadChunk, decode_chunk
from .imagedir import ImageDir


class LocalBlobs:
    """Open blob files of an image dir; ``chunk_data(i)`` returns chunk i's verified bytes."""

    def __init__(self, img: ImageDir, bs: Bootstrap) -> None:
        self.img = img
        self.bs = bs
        self._fds: dict[int, int] = {}

    def _fd(self, blob_index: int) -> int:
        fd = self._fds.get(blob_index)
        if fd is None:
            digest = self.bs.blobs[blob_index].digest
            path = self.img.blob_path(digest)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise ImageError(f"{self.img.path}: blob {digest} missing") from None
            self._fds[blob_index] = fd
        return fd

    def chunk_data(self, index: int) -> bytes:
        c = self.bs.chunk(index)
        stored = os.pread(self._fd(c.blob_index), c.compressed_size, c.compressed_offset)
        try:
            return decode_chunk(c, stored)
        except BadChunk as exc:
            blob = self.bs.blobs[c.blob_index].digest
            raise ImageError(f"chunk {index} in blob {blob}: {exc}") from None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class FileData:
    """A regular file's bytes as a stream (holes read as zeros), for tarfile.addfile."""

    def __init__(self, blobs: LocalBlobs, ino: int, size: int) -> None:
        self._blobs = blobs
        self._chunk_at = dict(blobs.bs.file_chunks(ino))  # file_offset -> chunk index
        self._cs = blobs.bs.chunk_size
        self._size = size
        self._pos = 0
        self._base = -1
        self._data = b""

    def _load(self, base: int) -> bytes:
        if base != self._base:
            index = self._chunk_at.get(base)
            if index is None:
                self._data = bytes(min(self._cs, self._size - base))  # a hole
            else:
                self._data = self._blobs.chunk_data(index)
            self._base = base
        return self._data

    def read(self, n: int = -1, /) -> bytes:
        if n < 0 or n > self._size - self._pos:
            n = self._size - self._pos
        parts = []
        while n > 0:
            base = self._pos - self._pos % self._cs
            data = self._load(base)
            piece = data[self._pos - base : self._pos - base + n]
            if not piece:
                break
            parts.append(piece)
            self._pos += len(piece)
            n -= len(piece)
        return b"".join(parts)
