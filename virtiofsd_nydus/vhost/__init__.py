"""A vhost-user back-end library, generic over the virtio device (virtio-fs is its first user).

Layers, each usable alone: ``message`` (wire format) and ``protocol`` (state machine) are
sans-I/O; ``memory`` and ``vring`` wrap the C core (guest memory, split virtqueues);
``connection`` is the asyncio glue; a device implements :class:`VirtioDevice`.
"""

from .connection import Connection, listen, serve
from .device import VirtioDevice
from .memory import GuestMemory
from .message import MessageError
from .protocol import BackendProtocol
from .vring import Chain, Virtqueue

__all__ = [
    "BackendProtocol",
    "Chain",
    "Connection",
    "GuestMemory",
    "MessageError",
    "VirtioDevice",
    "Virtqueue",
    "listen",
    "serve",
]
