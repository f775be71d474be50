"""Where chunk bytes come from: backends, the local cache, the verifying fetcher.

Three layers, as in nydus: a ``Backend`` reads stored (compressed) bytes of blobs; the
``CacheDir`` keeps verified uncompressed chunks in per-blob sparse files with bitmaps; the
``ChunkStore`` ties them together for one image and is the file system's ``ChunkSource``.
See docs/storage.md.
"""

from .backend import Backend, RetryPolicy, TransientError
from .cache import BlobCache, CacheDir
from .fetcher import ChunkStore, StoreMetrics
from .localfs import LocalFsBackend

__all__ = [
    "Backend",
    "BlobCache",
    "CacheDir",
    "ChunkStore",
    "LocalFsBackend",
    "RetryPolicy",
    "StoreMetrics",
    "TransientError",
]
