"""The FUSE protocol (sans-I/O) and the file systems served over it."""
