/* The hot FUSE requests served in C, straight from a virtqueue.
 *
 * vn_fs_drain pops chains and answers LOOKUP, GETATTR, READ (of cached, verified chunks),
 * OPEN (read-only), FLUSH, RELEASE, OPENDIR, READDIR, READDIRPLUS and RELEASEDIR against
 * the mapped bootstrap, without Python. Anything else, and anything in doubt
 * (malformed header, corrupt bootstrap reference, chunk not verified, short buffer), is
 * handed back to the caller untouched so the Python server answers it: the replies written
 * here are byte-identical to what virtiofsd_nydus/fuse/server.py + imagefs.py produce.
 *
 * The bootstrap is untrusted: vn_fs_check bounds-checks the section table once, and every
 * access checks its index or string range again. struct vn_fs is filled in by
 * virtiofsd_nydus/fuse/fastpath.py. Counters are plain: one thread drains a vn_fs.
 */
#ifndef VN_FASTPATH_H
#define VN_FASTPATH_H
#include <stdint.h>

#include "vring.h"

/* CDEF-BEGIN */
/* Why a chain was left to Python (index into vn_fs.fallbacks). */
enum vn_fs_fallback {
    VN_FB_SERVED = 0,
    VN_FB_NOT_INIT = 1,     /* no FUSE session (before INIT, after DESTROY) */
    VN_FB_OPCODE = 2,       /* not a hot opcode */
    VN_FB_MALFORMED = 3,    /* header/arguments short or lying, reply buffer too small */
    VN_FB_NAME = 4,         /* LOOKUP name invalid (Python answers the error) */
    VN_FB_INODE = 5,        /* node id out of range, or the wrong type for the op */
    VN_FB_IMAGE = 6,        /* a bootstrap reference out of range or inconsistent */
    VN_FB_MISS = 7,         /* a chunk not verified in the cache this lifetime */
    VN_FB_IO = 8,           /* cache file read failed or came up short */
    VN_FB_DISABLED = 9,     /* the context failed vn_fs_check */
    VN_FB_MAX = 10
};

enum vn_fs_served {
    VN_FS_LOOKUP = 0, VN_FS_GETATTR = 1, VN_FS_READ = 2, VN_FS_OPENDIR = 3, VN_FS_READDIR = 4,
    VN_FS_READDIRPLUS = 5, VN_FS_RELEASEDIR = 6, VN_FS_OPEN = 7, VN_FS_FLUSH = 8,
    VN_FS_RELEASE = 9, VN_FS_NSERVED = 10
};

/* A blob's local cache: data file and the in-memory "verified this lifetime" bitmap. */
struct vn_fs_blob {
    int32_t fd;                 /* cache data file; -1: no cache (every read misses) */
    uint32_t _pad;
    const uint8_t *verified;    /* one bit per slot (slot = uncompressed_offset / chunk_size) */
    uint64_t nslots;
    uint64_t compressed_size;   /* from the blob record, as storage checks chunk ranges */
    uint64_t uncompressed_size;
};

/* One bootstrap section: byte offset, record size, record count (strings: bytes). */
struct vn_fs_section {
    uint64_t offset;
    uint64_t record_size;
    uint64_t count;
};

struct vn_fs {
    const uint8_t *boot;        /* the mapped bootstrap */
    uint64_t boot_len;
    struct vn_fs_section inodes, dirents, strings, file_chunks, chunks;
    uint32_t chunk_size;        /* = the cache slot size */
    uint32_t nblobs;
    struct vn_fs_blob *blobs;
    uint64_t entry_sec, attr_sec;
    uint32_t entry_nsec, attr_nsec;
    uint32_t negative_entries;  /* answer a missing name with a cacheable negative entry */
    uint32_t max_write;         /* the server's max_write: READ replies are capped by it */
    uint32_t opendir_flags;     /* open_flags of an OPENDIR reply (FOPEN_CACHE_DIR ...) */
    uint32_t open_flags;        /* open_flags of a read-only OPEN reply (FOPEN_KEEP_CACHE ...) */
    uint32_t initialized;       /* a FUSE session is up (set from Python, read here) */
    uint32_t proto_minor;
    uint32_t read_enabled;      /* serve READ (a ChunkStore with caches is attached) */
    uint32_t valid;             /* set by vn_fs_check */
    uint32_t *lookups;          /* lookup count per inode, [0..nlookups); atomic */
    uint64_t nlookups;
    uint64_t served[VN_FS_NSERVED];
    uint64_t fallbacks[VN_FB_MAX];
    uint64_t read_bytes;
    uint64_t notifies;
};

/* Validate the context (sections inside the mapping, sizes, blobs). 0 or -EINVAL; on
 * success fs->valid = 1. Call again after changing any field. */
int vn_fs_check(struct vn_fs *fs);

/* Serve one popped chain. Returns VN_FB_SERVED with *written = reply bytes (the caller
 * pushes it), or the fallback reason: the chain is untouched as far as the reply header
 * goes and Python must answer it. */
int vn_fs_serve(struct vn_fs *fs, const struct vn_chain *c, uint32_t *written);

/* Pop and serve until the ring is empty, max_chains are left over, the iovec pool is too
 * full to pop a chain needing iov_room iovecs, or 1024 chains were popped (the caller
 * comes back: returning 0 does not mean the ring is empty). Served chains are pushed (and the guest
 * notified through call_fd, if >= 0 and it asks) after every pop round. Left-over chains
 * are compacted into chains[0..n) with their iovecs in iovs; returns n (>= 0). A broken
 * queue just ends the drain (vq->broken says why). */
int vn_fs_drain(struct vn_fs *fs, struct vn_vq *vq, struct vn_chain *chains,
                uint32_t max_chains, struct vn_iov *iovs, uint32_t iov_cap, uint32_t iov_room,
                int call_fd);

/* Lookup counts shared with the Python image fs (atomic; saturate at 0 and 2^32 - 1). */
void vn_fs_lookup_add(struct vn_fs *fs, uint64_t ino);
void vn_fs_forget(struct vn_fs *fs, uint64_t ino, uint64_t nlookup);
uint32_t vn_fs_lookup_count(const struct vn_fs *fs, uint64_t ino);
void vn_fs_lookups_clear(struct vn_fs *fs);
/* CDEF-END */

#endif
