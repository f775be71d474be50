"""python -m tests.fuse.pseudo_daemon SOCK SHARED_DIR IMAGE_DIR CACHE_DIR: one export holding
a passthrough at /containers and an image at /rafs/c1/lowerdir (Kata's nydus layout).

The daemon's CLI serves one file system; this wires a PseudoFS into the same device and
vhost-user connection for the VM test until the daemon's mount API does it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvloop

from virtiofsd_nydus.daemon.virtiofs import VirtioFsDevice
from virtiofsd_nydus.format.reader import Bootstrap
from virtiofsd_nydus.fuse import ImageFS, PassthroughFS, PseudoFS, Server
from virtiofsd_nydus.storage import CacheDir, ChunkStore, LocalFsBackend
from virtiofsd_nydus.vhost import connection


def main(sock: str, shared: str, image: str, cache: str) -> None:
    bs = Bootstrap.open(Path(image) / "image.boot")
    store = ChunkStore.from_bootstrap(
        bs, [LocalFsBackend(Path(image) / "blobs" / "sha256")], CacheDir(cache)
    )
    fs = PseudoFS()
    fs.mount("/containers", PassthroughFS(shared))
    fs.mount("/rafs/c1/lowerdir", ImageFS(bs, store))
    device = VirtioFsDevice(Server(fs))
    listener = connection.listen(sock)
    print("Waiting for vhost-user socket connection...", file=sys.stderr, flush=True)
    uvloop.run(connection.serve(device, listener))


if __name__ == "__main__":
    main(*sys.argv[1:5])
