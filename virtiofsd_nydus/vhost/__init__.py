"""A vhost-user back-end library, generic over the virtio device (virtio-fs is its first user)."""
