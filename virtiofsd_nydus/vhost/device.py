"""The interface a virtio device implements to be served over vhost-user.

The device never sees the socket, the messages or the memory table: it gets batches of
popped descriptor chains and answers each with :meth:`Virtqueue.complete` (now, or later
from a task). Everything except ``num_queues`` and ``handle`` has a default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import GuestError

if TYPE_CHECKING:
    from .vring import Chain, Virtqueue


class VirtioDevice:
    """Subclass and override ``handle``; set ``num_queues`` (and the rest as needed)."""

    #: Number of virtqueues (GET_QUEUE_NUM), e.g. virtio-fs: 1 hiprio + N request queues.
    num_queues: int = 1
    #: Device-specific virtio feature bits (masks), offered in addition to the transport's.
    features: int = 0
    #: Largest queue size accepted in SET_VRING_NUM (a power of two, <= 32768).
    max_queue_size: int = 32768
    #: Chains popped per batch.
    batch_size: int = 64

    def config(self) -> bytes | None:
        """Device config space. ``None`` (the default) does not offer the CONFIG feature."""
        return None

    def set_config(self, offset: int, data: bytes) -> None:
        """The front-end writes config space; read-only by default."""
        raise GuestError("device config space is read-only")

    def set_features(self, features: int) -> None:
        """The driver acknowledged these virtio feature bits (all of them, masks)."""

    def queue_started(self, queue: Virtqueue) -> None:
        """A queue has memory, addresses and a kick fd; chains may arrive."""

    def queue_stopped(self, queue: Virtqueue) -> None:
        """A queue stopped (after its in-flight chains completed, or on reset)."""

    def handle(self, queue: Virtqueue, chains: Sequence[Chain]) -> None:
        """Process popped chains; answer each with ``queue.complete(chain, written)``.

        Called on the event loop; must not block. Long work goes into tasks that complete
        their chains later. A chain that is never completed keeps its queue from stopping.
        """
        raise NotImplementedError

    def reset(self) -> None:
        """The front-end reset the device or disconnected: drop all per-guest state."""
