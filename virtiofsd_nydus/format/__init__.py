"""The on-disk image format: bootstrap layout, mmap reader, writer, Merkle tree."""
