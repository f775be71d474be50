"""Exception roots.

Who is at fault decides what happens: a guest's mistake becomes an errno or a broken
queue, a bad image or backend becomes EIO with a log line, our own mistake is a bug.
"""

from __future__ import annotations


class VnydusError(Exception):
    """Root of every error this package raises on purpose."""


class LocalError(VnydusError):
    """We, or the user who started us, got something wrong (bad argument, bad build)."""


class GuestError(VnydusError):
    """The guest (or the vhost-user front-end) sent something malformed. Never trusted."""


class ImageError(VnydusError):
    """An image, bootstrap or blob is malformed, corrupt or missing."""


class BackendError(VnydusError):
    """A storage backend (registry, S3, directory) failed or gave bad bytes."""
