"""A backend over local files: a directory of blobs named by digest, or one blob file.

This is the NAS case (and the converter's output directory). A directory may hold blobs as
``DIR/<hex>`` (nydus localfs) or ``DIR/sha256/<hex>`` (an OCI layout's ``blobs`` dir).
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from ..errors import BackendError, LocalError
from .backend import Backend, RetryPolicy, digest_hex


class LocalFsBackend(Backend):
    def __init__(
        self,
        blob_dir: str | os.PathLike[str] | None = None,
        *,
        blob_file: str | os.PathLike[str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(retry)
        if (blob_dir is None) == (blob_file is None):
            raise LocalError("localfs backend: give exactly one of a blob dir or a blob file")
        self._dir = Path(blob_dir) if blob_dir is not None else None
        self._file = Path(blob_file) if blob_file is not None else None
        self.name = f"localfs:{self._dir or self._file}"
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def path_of(self, blob_digest: str) -> Path:
        """Where a blob lives (for a single blob file, every digest maps to it)."""
        hexd = digest_hex(blob_digest)
        if self._file is not None:
            return self._file
        assert self._dir is not None
        flat = self._dir / hexd
        return flat if flat.exists() else self._dir / "sha256" / hexd

    def _fd(self, blob_digest: str) -> int:
        with self._lock:
            fd = self._fds.get(blob_digest)
            if fd is not None:
                return fd
            path = self.path_of(blob_digest)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise BackendError(f"{self.name}: no blob {blob_digest}") from None
            self._fds[blob_digest] = fd
            return fd

    def try_read_sync(self, blob_digest: str, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise BackendError(f"{self.name}: bad range {offset}+{size}")
        fd = self._fd(blob_digest)
        parts: list[bytes] = []
        got = 0
        while got < size:
            part = os.pread(fd, size - got, offset + got)
            if not part:
                raise BackendError(
                    f"{self.name}: blob {blob_digest} ends before {offset}+{size} "
                    f"(read {got} bytes)"
                )
            parts.append(part)
            got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def try_read(self, blob_digest: str, offset: int, size: int) -> bytes:
        # A local (or NFS) pread can block for long: keep it off the event loop.
        return await asyncio.to_thread(self.try_read_sync, blob_digest, offset, size)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        super().close()
