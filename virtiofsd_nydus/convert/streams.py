"""Byte streams for layers: digest checking, decompression, forward-only seeking.

A layer is read exactly once, front to back: blob bytes → sha256 check → gunzip/unzstd →
(diff_id check) → tar parser. Nothing here buffers more than one read's worth of data.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import IO, BinaryIO, Protocol, cast

import zstandard

from ..errors import ImageError

READ_SIZE = 1 << 20
INPUT_SIZE = 256 << 10  # compressed bytes fed to zlib per call
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Prepend:
    """``head`` (bytes already read to sniff the format), then the rest of ``src``."""

    def __init__(self, head: bytes, src: Readable) -> None:
        self._head = head
        self._src = src

    def read(self, n: int = -1, /) -> bytes:
        if self._head:
            if n < 0 or n >= len(self._head):
                head, self._head = self._head, b""
                return head
            head, self._head = self._head[:n], self._head[n:]
            return head
        return self._src.read(n)


class DigestReader:
    """Passes bytes through while hashing them; ``finish`` drains and checks the digest."""

    def __init__(self, src: Readable, expected: str | None, what: str) -> None:
        self._src = src
        self._what = what
        self._expected = expected
        self._hash = hashlib.sha256() if expected is not None else None  # hashing costs
        self.count = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._src.read(n)
        if self._hash is not None:
            self._hash.update(data)
        self.count += len(data)
        return data

    def finish(self) -> None:
        """Read what is left and check the digest (if one was expected)."""
        while self.read(READ_SIZE):
            pass
        if self._hash is None:
            return
        got = "sha256:" + self._hash.hexdigest()
        if got != self._expected:
            raise ImageError(f"{self._what}: digest mismatch: expected {self._expected}, got {got}")


class _GzipReader:
    """Streaming gunzip, multi-member, that notices truncation (Python's gzip is slow here).

    Output is produced in READ_SIZE pieces and served from a buffer: tar asks for 512-byte
    headers, and zlib copies its unconsumed input on every call, so small calls are costly."""

    def __init__(self, src: Readable, what: str) -> None:
        self._src = src
        self._what = what
        self._d = zlib.decompressobj(wbits=31)
        self._in = b""
        self._out = b""
        self._pos = 0

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            n = READ_SIZE
        if self._pos >= len(self._out):
            self._out, self._pos = self._inflate(), 0
        data = self._out[self._pos : self._pos + n]
        self._pos += len(data)
        return data

    def _inflate(self) -> bytes:
        while True:
            if not self._in:
                self._in = self._src.read(INPUT_SIZE)
                if not self._in:
                    if not self._d.eof:
                        raise ImageError(f"{self._what}: truncated gzip stream")
                    return b""
            if self._d.eof:  # one member done: more members may follow, or zero padding
                if not self._in.strip(b"\0"):
                    self._in = b""
                    continue
                self._d = zlib.decompressobj(wbits=31)
            try:
                out = self._d.decompress(self._in, READ_SIZE)
            except zlib.error as exc:
                raise ImageError(f"{self._what}: corrupt gzip stream ({exc})") from None
            self._in = self._d.unused_data if self._d.eof else self._d.unconsumed_tail
            if out:
                return out


class _ZstdReader:
    def __init__(self, src: Readable, what: str) -> None:
        self._what = what
        self._r = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], src), read_size=READ_SIZE, read_across_frames=True
        )

    def read(self, n: int = -1, /) -> bytes:
        try:
            data: bytes = self._r.read(n if n >= 0 else READ_SIZE)
        except zstandard.ZstdError as exc:
            raise ImageError(f"{self._what}: corrupt zstd stream ({exc})") from None
        return data


def decompressed(src: Readable, what: str) -> Readable:
    """Sniff the compression from the first bytes (media types lie) and undo it."""
    head = b""
    while len(head) < len(ZSTD_MAGIC) and (more := src.read(len(ZSTD_MAGIC) - len(head))):
        head += more
    stream = _Prepend(head, src)
    if head.startswith(GZIP_MAGIC):
        return _GzipReader(stream, what)
    if head.startswith(ZSTD_MAGIC):
        return _ZstdReader(stream, what)
    return stream


class ForwardReader:
    """A file object tarfile can use in random-access mode over a stream.

    Seeking forward reads and discards; seeking back is an error. It also remembers the
    last block tarfile read, to tell a proper end-of-archive from a truncated one.
    """

    def __init__(self, src: Readable, what: str) -> None:
        self._src = src
        self._what = what
        self._pos = 0
        self.last_read: bytes = b""

    def read(self, n: int = -1, /) -> bytes:
        data = self._read(n)
        self.last_read = data
        return data

    def _read(self, n: int) -> bytes:
        if n < 0:
            parts = []
            while chunk := self._src.read(READ_SIZE):
                parts.append(chunk)
            data = b"".join(parts)
        else:
            data = self._src.read(n)
            if 0 < len(data) < n:  # sources may return short reads: fill up
                parts = [data]
                got = len(data)
                while got < n and (more := self._src.read(n - got)):
                    parts.append(more)
                    got += len(more)
                data = b"".join(parts)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self._pos
        elif whence != 0:
            raise ImageError(f"{self._what}: tar stream cannot seek from its end")
        if pos < self._pos:
            raise ImageError(f"{self._what}: tar stream needs to seek backwards")
        while self._pos < pos:
            if not self._read(min(READ_SIZE, pos - self._pos)):
                break  # past the end: the next read reports the truncation
        return self._pos


def open_file(path: str, what: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ImageError(f"{what}: missing ({path})") from None
    except OSError as exc:
        raise ImageError(f"{what}: cannot open {path}: {exc.strerror}") from None
