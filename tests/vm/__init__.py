"""The real-guest test rig: fetch a reference virtiofsd and a guest kernel, boot QEMU guests.

Everything is fetched and built on first use and cached under ~/.cache/virtiofsd-nydus/
(see cache.py), so a fresh Debian 12 machine needs nothing but network access to its archive.
"""
