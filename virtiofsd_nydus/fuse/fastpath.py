"""The C fast path for hot FUSE requests (csrc/fastpath.c), set up from Python.

``FastPath(server, imagefs, store)`` hands the C core what it needs to answer LOOKUP,
GETATTR, READ of verified cached chunks, OPEN (read-only), FLUSH, RELEASE, OPENDIR,
READDIR, READDIRPLUS and RELEASEDIR without Python: the mapped bootstrap and its
section table, each blob's cache fd and "verified" bitmap, the cache timeouts, the
session state and a lookup-count array shared with the image fs (so a FORGET handled in
Python decrements the counts C incremented). A virtqueue whose ``fast_drain`` is set to
it pops through ``vn_fs_drain``: C serves what it can and returns only the other chains,
which Python answers as before. The C replies are byte-identical to ``Server.handle``'s.

The bootstrap is untrusted: Python's ``Bootstrap.open`` validated the section table, and
the C core checks it again (``vn_fs_check``) and bounds-checks every access.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .._native import ffi, lib
from ..errors import LocalError
from ..format import layout as L
from ..format.reader import Bootstrap
from ..storage.fetcher import ChunkStore
from .imagefs import ImageFS
from .server import Server

FALLBACK_REASONS: dict[int, str] = {
    lib.VN_FB_NOT_INIT: "not_initialized",
    lib.VN_FB_OPCODE: "opcode",
    lib.VN_FB_MALFORMED: "malformed",
    lib.VN_FB_NAME: "bad_name",
    lib.VN_FB_INODE: "inode",
    lib.VN_FB_IMAGE: "image",
    lib.VN_FB_MISS: "cache_miss",
    lib.VN_FB_IO: "io",
    lib.VN_FB_DISABLED: "disabled",
}
SERVED_OPS: dict[int, str] = {
    lib.VN_FS_LOOKUP: "LOOKUP",
    lib.VN_FS_GETATTR: "GETATTR",
    lib.VN_FS_READ: "READ",
    lib.VN_FS_OPENDIR: "OPENDIR",
    lib.VN_FS_READDIR: "READDIR",
    lib.VN_FS_READDIRPLUS: "READDIRPLUS",
    lib.VN_FS_RELEASEDIR: "RELEASEDIR",
    lib.VN_FS_OPEN: "OPEN",
    lib.VN_FS_FLUSH: "FLUSH",
    lib.VN_FS_RELEASE: "RELEASE",
}


class SharedLookups(Mapping[int, int]):
    """Lookup counts per inode in a C array that the C path increments atomically.

    Read as a mapping of the non-zero counts (``{ino: count}``), like ``ImageFS.lookups``.
    """

    def __init__(self, fs: Any) -> None:
        self._fs = fs  # cdata struct vn_fs *, owns the array

    def add(self, ino: int) -> None:
        lib.vn_fs_lookup_add(self._fs, ino)

    def forget(self, ino: int, nlookup: int) -> None:
        lib.vn_fs_forget(self._fs, ino, min(nlookup, (1 << 64) - 1))

    def clear(self) -> None:
        lib.vn_fs_lookups_clear(self._fs)

    def __getitem__(self, ino: int) -> int:
        n = int(lib.vn_fs_lookup_count(self._fs, ino)) if ino >= 0 else 0
        if n == 0:
            raise KeyError(ino)
        return n

    def __iter__(self) -> Iterator[int]:
        counts = self._fs.lookups
        return (i for i in range(int(self._fs.nlookups)) if counts[i])

    def __len__(self) -> int:
        return sum(1 for _ in self)


class FastPath:
    """The C context serving one image fs behind one Server (all request queues)."""

    def __init__(self, server: Server, fs: ImageFS, store: ChunkStore | None = None) -> None:
        if server.fs is not fs:
            raise LocalError("the fast path must serve the server's own image fs")
        bs = fs.bs
        self.server = server
        self.fs = fs
        self._c: Any = ffi.new("struct vn_fs *")
        c = self._c
        # The mapping's address; this cdata keeps it exported (released in close()).
        self._boot: Any = ffi.from_buffer(_buffer_of(bs))
        c.boot = self._boot
        c.boot_len = len(self._boot)
        for name, kind in (
            ("inodes", L.Kind.INODES),
            ("dirents", L.Kind.DIRENTS),
            ("strings", L.Kind.STRINGS),
            ("file_chunks", L.Kind.FILE_CHUNKS),
            ("chunks", L.Kind.CHUNKS),
        ):
            sec = bs.sections[kind]
            if sec.offset + sec.count * sec.record_size > c.boot_len:
                raise LocalError(f"bootstrap section {kind} outside the mapping")
            s = getattr(c, name)
            s.offset, s.record_size, s.count = sec.offset, sec.record_size, sec.count
        c.chunk_size = bs.chunk_size
        t = fs.policy.timeouts
        c.entry_sec, c.entry_nsec, c.attr_sec, c.attr_nsec = t
        c.negative_entries = 1 if t.entry_sec else 0  # as ImageFS decides negative entries
        c.max_write = server.max_write
        c.opendir_flags = fs.opendir_flags
        c.open_flags = fs.open_flags
        self._lookups_arr: Any = ffi.new("uint32_t[]", bs.inode_count + 1)
        c.lookups = self._lookups_arr
        c.nlookups = bs.inode_count + 1
        self._blobs: Any = ffi.NULL
        self._bitmaps: list[Any] = []  # keep the verified bitmaps' buffers exported
        if store is not None:
            self._attach_store(bs, store)
        if lib.vn_fs_check(c) != 0:
            raise LocalError("the C fast path refused the bootstrap's layout")
        self.lookups = SharedLookups(c)
        fs.share_lookups(self.lookups)
        self._initialized = False
        self.sync_session()

    def _attach_store(self, bs: Bootstrap, store: ChunkStore) -> None:
        if self.fs.chunks is not store:
            raise LocalError("the store must be the image fs's own chunk source")
        if store.slot_size != bs.chunk_size:
            raise LocalError("cache slot size differs from the chunk size: no READ fast path")
        blobs = bs.blobs
        arr = ffi.new("struct vn_fs_blob[]", max(len(blobs), 1))
        for i, info in enumerate(blobs):
            bc = store.blob_cache(i)
            view = ffi.from_buffer(bc.verified)
            self._bitmaps.append(view)
            b = arr[i]
            b.fd = bc.fd
            b.verified = view
            b.nslots = min(bc.nslots, len(bc.verified) * 8)
            b.compressed_size = info.compressed_size
            b.uncompressed_size = info.uncompressed_size
        self._blobs = arr
        self._c.blobs = arr
        self._c.nblobs = len(blobs)
        self._c.read_enabled = 1

    # ---- session --------------------------------------------------------------------------
    def sync_session(self) -> None:
        """Mirror the server's session state (call after INIT, DESTROY, reset)."""
        server = self.server
        if server.initialized != self._initialized:
            self._c.proto_minor = server.proto_minor
            self._c.initialized = 1 if server.initialized else 0
            self._initialized = server.initialized

    # ---- serving --------------------------------------------------------------------------
    def drain(
        self, vq: Any, chains: Any, max_chains: int, iovs: Any, iov_cap: int, call_fd: int
    ) -> int:
        """Virtqueue.pop's hook: serve hot chains in C; the count left in chains[0..n)."""
        return int(
            lib.vn_fs_drain(self._c, vq, chains, max_chains, iovs, iov_cap, iov_cap, call_fd)
        )

    def serve(self, chain: Any) -> int | None:
        """Serve one popped chain (cdata) in C: reply bytes written, or None (Python's)."""
        written = ffi.new("uint32_t *")
        rc = lib.vn_fs_serve(self._c, chain, written)
        self._c.fallbacks[rc] += 1
        return int(written[0]) if rc == lib.VN_FB_SERVED else None

    def stats(self) -> dict[str, int]:
        """Counters: served_<OP>, fallback_<reason>, read_bytes, notifies."""
        c = self._c
        out = {f"served_{name}": int(c.served[i]) for i, name in SERVED_OPS.items()}
        out.update({f"fallback_{n}": int(c.fallbacks[i]) for i, n in FALLBACK_REASONS.items()})
        out["read_bytes"] = int(c.read_bytes)
        out["notifies"] = int(c.notifies)
        return out

    def close(self) -> None:
        """Stop serving and let the bootstrap and bitmaps go (idempotent)."""
        self._c.valid = 0
        for view in self._bitmaps:
            ffi.release(view)
        self._bitmaps.clear()
        if self._boot is not None:
            ffi.release(self._boot)
            self._boot = None


def _buffer_of(bs: Bootstrap) -> Any:
    # The reader keeps its mapping private; the C core reads the same bytes in place.
    return bs._buf
