"""The backend interface: where a blob's (compressed) bytes come from.

A backend answers Range reads of blobs named by their digest. Subclasses implement only
``try_read`` (one attempt, async); the shared base wraps it with timeouts and retries
(``read``), like nydus's ``try_read`` under ``read``. A backend whose natural API is
blocking (a local directory) also overrides ``try_read_sync`` so the synchronous chunk path
never needs an event loop. The bytes a backend returns are untrusted: the fetcher verifies.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from ..errors import BackendError

log = structlog.get_logger(__name__)

_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
_T = TypeVar("_T")


class TransientError(BackendError):
    """A failure worth retrying on the same source (I/O error, timeout, 5xx)."""


def digest_hex(blob_digest: str) -> str:
    """The hex part of a ``sha256:<hex>`` blob digest; anything else is refused.

    The digest comes from the image and names files and URLs: validate before use.
    """
    m = _DIGEST_RE.fullmatch(blob_digest)
    if m is None:
        raise BackendError(f"not a sha256 blob digest: {blob_digest[:80]!r}")
    return m.group(1)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3  # tries per read on one source (transient errors only)
    timeout: float = 30.0  # seconds per attempt (async path)
    backoff: float = 0.05  # seconds before the 2nd attempt, doubled each time


class Backend(ABC):
    """One source of blob bytes. ``name`` appears in every log line about it."""

    name: str = "backend"

    def __init__(self, retry: RetryPolicy | None = None) -> None:
        self.retry = retry or RetryPolicy()
        self._loop_thread: _LoopThread | None = None
        self._loop_lock = threading.Lock()

    @abstractmethod
    async def try_read(self, blob_digest: str, offset: int, size: int) -> bytes:
        """One attempt at reading exactly ``size`` bytes at ``offset`` of a blob.

        Raise TransientError (or OSError/TimeoutError) for what a retry may fix,
        BackendError for what it will not (no such blob, range past its end).
        """

    def try_read_sync(self, blob_digest: str, offset: int, size: int) -> bytes:
        """Blocking form of ``try_read``. The default runs it on a private loop thread,
        so it is safe to call from any thread, including one running an event loop."""
        with self._loop_lock:
            if self._loop_thread is None:
                self._loop_thread = _LoopThread(f"{self.name}-sync")
            runner = self._loop_thread
        return runner.run(self.try_read(blob_digest, offset, size), self.retry.timeout)

    async def read(self, blob_digest: str, offset: int, size: int) -> bytes:
        """Read with per-attempt timeouts and retries; BackendError when all attempts fail."""
        last: BaseException | None = None
        for attempt in range(max(1, self.retry.attempts)):
            if attempt:
                await asyncio.sleep(self.retry.backoff * (1 << (attempt - 1)))
            try:
                data = await asyncio.wait_for(
                    self.try_read(blob_digest, offset, size), self.retry.timeout
                )
                return self._check_len(blob_digest, offset, size, data)
            except (TransientError, OSError, TimeoutError) as exc:
                last = exc
                self._log_retry(blob_digest, offset, size, attempt, exc)
        raise self._exhausted(blob_digest, offset, size, last)

    def read_sync(self, blob_digest: str, offset: int, size: int) -> bytes:
        """Blocking ``read``: the same retries, on the caller's thread."""
        last: BaseException | None = None
        for attempt in range(max(1, self.retry.attempts)):
            if attempt:
                time.sleep(self.retry.backoff * (1 << (attempt - 1)))
            try:
                data = self.try_read_sync(blob_digest, offset, size)
                return self._check_len(blob_digest, offset, size, data)
            except (TransientError, OSError, TimeoutError) as exc:
                last = exc
                self._log_retry(blob_digest, offset, size, attempt, exc)
        raise self._exhausted(blob_digest, offset, size, last)

    def close(self) -> None:
        with self._loop_lock:
            if self._loop_thread is not None:
                self._loop_thread.stop()
                self._loop_thread = None

    def _check_len(self, blob_digest: str, offset: int, size: int, data: bytes) -> bytes:
        if len(data) != size:
            raise BackendError(
                f"{self.name}: blob {blob_digest} range {offset}+{size} gave {len(data)} bytes"
            )
        return data

    def _log_retry(
        self, blob_digest: str, offset: int, size: int, attempt: int, exc: BaseException
    ) -> None:
        log.warning(
            "backend read failed",
            source=self.name,
            blob=blob_digest,
            offset=offset,
            size=size,
            attempt=attempt + 1,
            error=str(exc) or type(exc).__name__,
        )

    def _exhausted(
        self, blob_digest: str, offset: int, size: int, last: BaseException | None
    ) -> BackendError:
        why = (str(last) or type(last).__name__) if last else "no attempt"
        return BackendError(
            f"{self.name}: reading blob {blob_digest} range {offset}+{size} failed "
            f"after {self.retry.attempts} attempts: {why}"
        )


class _LoopThread:
    """An event loop on a daemon thread, for running async backends from blocking code."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
