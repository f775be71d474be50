/* Hot FUSE requests in C; see fastpath.h for the contract. The reply formats mirror
 * virtiofsd_nydus/fuse/server.py (Server._lookup/_getattr/_read) and imagefs.py. */
#include "fastpath.h"

#include <errno.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* FUSE ABI (include/uapi/linux/fuse.h) */
#define OP_LOOKUP 1
#define OP_GETATTR 3
#define OP_OPEN 14
#define OP_READ 15
#define OP_RELEASE 18
#define OP_FLUSH 25
#define OP_OPENDIR 27
#define OP_READDIR 28
#define OP_RELEASEDIR 29
#define OP_READDIRPLUS 44
#define IN_HEADER_SIZE 40
#define OUT_HEADER_SIZE 16
#define ATTR_SIZE 88
#define ENTRY_OUT_SIZE 128
#define ATTR_OUT_SIZE 104
#define GETATTR_IN_SIZE 16
#define READ_IN_SIZE 40
#define OPEN_IN_SIZE 8
#define OPEN_OUT_SIZE 16
#define RELEASE_IN_SIZE 24
#define FLUSH_IN_SIZE 24
#define O_ACCMODE_ 3
#define O_TRUNC_ 01000
#define DIRENT_HEAD 24      /* fuse_dirent without the name */
#define DIRENTPLUS_HEAD 152 /* fuse_entry_out + fuse_dirent */
#define DT_DIR_ 4
#define NAME_MAX_ 255
#define BLKSIZE 4096
#define MAX_OFFSET 0x7fffffffffffffffULL

/* Bootstrap records (docs/format.md) */
#define INODE_SIZE 104
#define DIRENT_SIZE 24
#define FILE_CHUNK_SIZE 16
#define CHUNK_SIZE_REC 64
#define S_IFMT_ 0170000u
#define S_IFDIR_ 0040000u
#define S_IFREG_ 0100000u
#define CHUNK_F_COMPRESSED 1u
#define KEY_LEN 8

#define ROUND_MAX 256 /* chains per pop round: bounds the on-stack push arrays */
#define DRAIN_BUDGET 1024 /* chains per drain call: a busy guest must not starve the loop */

static inline uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* ---- context validation ---------------------------------------------------------------- */

static int section_ok(const struct vn_fs *fs, const struct vn_fs_section *s, uint64_t min_rec)
{
    if (s->record_size < min_rec || s->offset > fs->boot_len)
        return 0;
    if (s->count != 0 && s->record_size > (fs->boot_len - s->offset) / s->count)
        return 0; /* count * record_size would pass the end (or overflow) */
    return 1;
}

int vn_fs_check(struct vn_fs *fs)
{
    fs->valid = 0;
    uint32_t cs = fs->chunk_size;
    if (fs->boot == NULL || cs < 4096 || cs > (16u << 20) || (cs & (cs - 1)))
        return -EINVAL;
    if (!section_ok(fs, &fs->inodes, INODE_SIZE) || !section_ok(fs, &fs->dirents, DIRENT_SIZE) ||
        !section_ok(fs, &fs->strings, 1) || !section_ok(fs, &fs->file_chunks, FILE_CHUNK_SIZE) ||
        !section_ok(fs, &fs->chunks, CHUNK_SIZE_REC))
        return -EINVAL;
    if (fs->nblobs && fs->blobs == NULL)
        return -EINVAL;
    if (fs->lookups == NULL || fs->nlookups < fs->inodes.count + 1)
        return -EINVAL;
    if (fs->max_write == 0)
        return -EINVAL;
    fs->valid = 1;
    return 0;
}

/* ---- checked bootstrap access ------------------------------------------------------------ */

/* Record idx of a section, or NULL if out of range (ranges were checked by vn_fs_check). */
static inline const uint8_t *record(const struct vn_fs *fs, const struct vn_fs_section *s,
                                    uint64_t idx)
{
    if (idx >= s->count)
        return NULL;
    return fs->boot + s->offset + idx * s->record_size;
}

static inline const uint8_t *inode_rec(const struct vn_fs *fs, uint64_t ino)
{
    return ino == 0 ? NULL : record(fs, &fs->inodes, ino - 1);
}

static inline const uint8_t *string_at(const struct vn_fs *fs, uint64_t off, uint64_t len)
{
    if (off > fs->strings.count || len > fs->strings.count - off)
        return NULL;
    return fs->boot + fs->strings.offset + off;
}

/* ---- reply building ------------------------------------------------------------------- */

/* fuse_attr of an inode record, as imagefs.attr_of builds it. */
static void pack_attr(uint8_t *out, uint64_t ino, const uint8_t *rec, uint32_t chunk_size)
{
    uint32_t mode = ld32(rec), uid = ld32(rec + 4), gid = ld32(rec + 8), nlink = ld32(rec + 12);
    uint64_t size = ld64(rec + 16), rdev = ld64(rec + 24), sec = ld64(rec + 32);
    uint32_t nsec = ld32(rec + 40);
    uint32_t enc = 0;
    if (rdev) { /* the kernel's new_encode_dev(), from glibc's major/minor like os.major */
        uint64_t maj = major(rdev), min = minor(rdev);
        enc = (uint32_t)((min & 0xff) | (maj << 8) | ((min & ~0xffULL) << 12));
    }
    st64(out, ino);
    st64(out + 8, size);
    /* Blocks count stored chunks (holes show); (n + 511) >> 9 without overflow. */
    uint64_t stored = size;
    if ((mode & S_IFMT_) == S_IFREG_) {
        uint64_t chunks = (uint64_t)ld32(rec + 56) * chunk_size;
        stored = chunks < size ? chunks : size;
    }
    st64(out + 16, (stored >> 9) + ((stored & 511) != 0));
    st64(out + 24, sec);
    st64(out + 32, sec);
    st64(out + 40, sec);
    st32(out + 48, nsec);
    st32(out + 52, nsec);
    st32(out + 56, nsec);
    st32(out + 60, mode);
    st32(out + 64, nlink);
    st32(out + 68, uid);
    st32(out + 72, gid);
    st32(out + 76, enc);
    st32(out + 80, BLKSIZE);
    st32(out + 84, 0);
}

static inline void pack_out_header(uint8_t *out, uint32_t len, int32_t error, uint64_t unique)
{
    st32(out, len);
    memcpy(out + 4, &error, 4);
    st64(out + 8, unique);
}

/* Write a complete reply (header + payload in one buffer); the bytes written. */
static uint32_t reply(const struct vn_chain *c, uint8_t *buf, uint32_t len)
{
    return (uint32_t)vn_chain_write(c, 0, buf, len);
}

/* ---- request parsing -------------------------------------------------------------------- */

struct req {
    uint32_t opcode;
    uint64_t unique;
    uint64_t nodeid;
    uint32_t body_len; /* op arguments, extensions cut off */
    uint32_t max_reply;
};

/* fuse_in_header as Server.handle checks it; VN_FB_SERVED if it holds. */
static int parse_header(const struct vn_chain *c, struct req *r)
{
    uint8_t h[IN_HEADER_SIZE];
    if (c->read_len < IN_HEADER_SIZE || c->write_len < OUT_HEADER_SIZE)
        return VN_FB_MALFORMED;
    vn_chain_read(c, 0, h, sizeof(h));
    uint32_t length = ld32(h);
    uint64_t end = (uint64_t)length - 8ull * ld16(h + 36); /* total_extlen, units of 8 */
    r->opcode = ld32(h + 4);
    r->unique = ld64(h + 8);
    r->nodeid = ld64(h + 16);
    if (length > c->read_len || (int64_t)end < IN_HEADER_SIZE)
        return VN_FB_MALFORMED;
    r->body_len = (uint32_t)end - IN_HEADER_SIZE;
    r->max_reply = c->write_len;
    return VN_FB_SERVED;
}

/* ---- LOOKUP ---------------------------------------------------------------------------- */

/* Bootstrap.lookup's algorithm, step for step (bisect over the key column, then names),
 * so that even an unsorted (lying) directory gives Python's answer. *child = -1: absent.
 * Returns VN_FB_SERVED, or VN_FB_IMAGE where Python would raise ImageError. */
static int dir_lookup(const struct vn_fs *fs, uint64_t lo, uint64_t hi, const uint8_t *name,
                      uint32_t nlen_want, int64_t *child)
{
    uint8_t padded[KEY_LEN] = {0};
    memcpy(padded, name, nlen_want < KEY_LEN ? nlen_want : KEY_LEN);
    uint64_t key = __builtin_bswap64(ld64(padded));
    const struct vn_fs_section *de = &fs->dirents;
    const uint8_t *base = fs->boot + de->offset;
    uint64_t rs = de->record_size;
#define KEY(i) ld64(base + (i) * rs)
    *child = -1;
    uint64_t a = lo, b = hi; /* bisect_left */
    while (a < b) {
        uint64_t mid = (a + b) / 2;
        if (KEY(mid) < key)
            a = mid + 1;
        else
            b = mid;
    }
    lo = a;
    if (lo == hi || KEY(lo) != key)
        return VN_FB_SERVED;
    if (nlen_want <= KEY_LEN) {
        const uint8_t *e = base + lo * rs;
        if (ld16(e + 20) == nlen_want)
            *child = ld32(e + 16);
        return VN_FB_SERVED;
    }
    b = hi; /* bisect_right from lo */
    while (a < b) {
        uint64_t mid = (a + b) / 2;
        if (key < KEY(mid))
            b = mid;
        else
            a = mid + 1;
    }
    hi = a;
    while (lo < hi) {
        uint64_t mid = (lo + hi) >> 1;
        const uint8_t *e = base + mid * rs;
        uint64_t k = ld64(e);
        if (k < key) {
            lo = mid + 1;
        } else if (k > key) {
            hi = mid;
        } else {
            uint32_t nlen = ld16(e + 20);
            const uint8_t *cand = string_at(fs, ld64(e + 8), nlen);
            if (cand == NULL)
                return VN_FB_IMAGE;
            uint32_t m = nlen < nlen_want ? nlen : nlen_want;
            int cmp = memcmp(cand, name, m);
            if (cmp == 0)
                cmp = (nlen > nlen_want) - (nlen < nlen_want);
            if (cmp < 0) {
                lo = mid + 1;
            } else if (cmp > 0) {
                hi = mid;
            } else {
                *child = ld32(e + 16);
                return VN_FB_SERVED;
            }
        }
    }
#undef KEY
    return VN_FB_SERVED;
}

static int serve_lookup(struct vn_fs *fs, const struct vn_chain *c, const struct req *r,
                        uint32_t *written)
{
    uint8_t name[NAME_MAX_ + 2];
    uint32_t want = r->body_len < sizeof(name) ? r->body_len : (uint32_t)sizeof(name);
    vn_chain_read(c, IN_HEADER_SIZE, name, want);
    uint8_t *nul = memchr(name, 0, want);
    if (nul == NULL)
        return VN_FB_NAME;
    uint32_t nlen = (uint32_t)(nul - name);
    if (nlen == 0 || nlen > NAME_MAX_ || memchr(name, '/', nlen) != NULL ||
        (name[0] == '.' && (nlen == 1 || (nlen == 2 && name[1] == '.'))))
        return VN_FB_NAME;
    const uint8_t *prec = inode_rec(fs, r->nodeid);
    if (prec == NULL)
        return VN_FB_INODE; /* ESTALE */
    uint8_t out[OUT_HEADER_SIZE + ENTRY_OUT_SIZE];
    int64_t child = -1;
    if ((ld32(prec) & S_IFMT_) == S_IFDIR_) {
        uint64_t lo = ld64(prec + 48), count = ld32(prec + 56);
        if (lo > fs->dirents.count || count > fs->dirents.count - lo)
            return VN_FB_IMAGE;
        int rc = dir_lookup(fs, lo, lo + count, name, nlen, &child);
        if (rc != VN_FB_SERVED)
            return rc;
    } else {
        pack_out_header(out, OUT_HEADER_SIZE, -ENOTDIR, r->unique);
        *written = reply(c, out, OUT_HEADER_SIZE);
        return VN_FB_SERVED;
    }
    const uint8_t *crec = NULL;
    if (child >= 0) {
        crec = inode_rec(fs, (uint64_t)child);
        if (crec == NULL)
            return VN_FB_IMAGE; /* an entry naming a missing inode: Python says ESTALE */
    } else if (!fs->negative_entries) {
        pack_out_header(out, OUT_HEADER_SIZE, -ENOENT, r->unique);
        *written = reply(c, out, OUT_HEADER_SIZE);
        return VN_FB_SERVED;
    }
    if (r->max_reply < sizeof(out))
        return VN_FB_MALFORMED;
    uint8_t *e = out + OUT_HEADER_SIZE;
    if (child < 0)
        child = 0; /* a negative entry: node id 0, zero attributes */
    st64(e, (uint64_t)child);
    st64(e + 8, 0); /* generation */
    st64(e + 16, fs->entry_sec);
    st64(e + 24, fs->attr_sec);
    st32(e + 32, fs->entry_nsec);
    st32(e + 36, fs->attr_nsec);
    if (crec != NULL)
        pack_attr(e + 40, (uint64_t)child, crec, fs->chunk_size);
    else
        memset(e + 40, 0, ATTR_SIZE);
    pack_out_header(out, sizeof(out), 0, r->unique);
    *written = reply(c, out, sizeof(out));
    if (crec != NULL)
        vn_fs_lookup_add(fs, (uint64_t)child);
    return VN_FB_SERVED;
}

/* ---- GETATTR --------------------------------------------------------------------------- */

static int serve_getattr(struct vn_fs *fs, const struct vn_chain *c, const struct req *r,
                         uint32_t *written)
{
    uint8_t out[OUT_HEADER_SIZE + ATTR_OUT_SIZE];
    if (r->body_len < GETATTR_IN_SIZE)
        return VN_FB_MALFORMED;
    const uint8_t *rec = inode_rec(fs, r->nodeid);
    if (rec == NULL)
        return VN_FB_INODE;
    if (r->max_reply < sizeof(out))
        return VN_FB_MALFORMED;
    uint8_t *a = out + OUT_HEADER_SIZE;
    st64(a, fs->attr_sec);
    st32(a + 8, fs->attr_nsec);
    st32(a + 12, 0);
    pack_attr(a + 16, r->nodeid, rec, fs->chunk_size);
    pack_out_header(out, sizeof(out), 0, r->unique);
    *written = reply(c, out, sizeof(out));
    return VN_FB_SERVED;
}

/* ---- READ ------------------------------------------------------------------------------ */

/* Zero the writable stream [offset, offset + len). */
static void stream_zero(const struct vn_chain *c, uint64_t offset, uint64_t len)
{
    const struct vn_iov *iov = c->iov + c->nread;
    for (uint32_t i = 0; i < c->nwrite && len > 0; i++) {
        if (offset >= iov[i].len) {
            offset -= iov[i].len;
            continue;
        }
        uint64_t n = iov[i].len - offset;
        if (n > len)
            n = len;
        memset(iov[i].base + offset, 0, (size_t)n);
        len -= n;
        offset = 0;
    }
}

/* The cache location of a chunk's verified bytes: its fd and uncompressed offset.
 * Mirrors Bootstrap.chunk + storage's check_chunk / check_chunk_in_blob: any record the
 * Python path refuses is VN_FB_IMAGE; an unverified slot is VN_FB_MISS. */
static int chunk_location(const struct vn_fs *fs, uint32_t cidx, int *fd, uint64_t *uoff,
                          uint32_t *usize)
{
    const uint8_t *ch = record(fs, &fs->chunks, cidx);
    if (ch == NULL)
        return VN_FB_IMAGE;
    uint64_t coff = ld64(ch + 32);
    uint64_t off = ld64(ch + 40);
    uint32_t csize = ld32(ch + 48), size = ld32(ch + 52), bi = ld32(ch + 56);
    uint32_t flags = ld32(ch + 60);
    if (bi >= fs->nblobs || size == 0 || size > fs->chunk_size || csize == 0)
        return VN_FB_IMAGE;
    if (off % fs->chunk_size || (!(flags & CHUNK_F_COMPRESSED) && csize != size))
        return VN_FB_IMAGE;
    const struct vn_fs_blob *b = &fs->blobs[bi];
    if (off > b->uncompressed_size || size > b->uncompressed_size - off)
        return VN_FB_IMAGE;
    if (coff > b->compressed_size || csize > b->compressed_size - coff)
        return VN_FB_IMAGE;
    uint64_t slot = off / fs->chunk_size;
    if (b->fd < 0 || b->verified == NULL || slot >= b->nslots)
        return VN_FB_MISS;
    if (!((__atomic_load_n(&b->verified[slot >> 3], __ATOMIC_ACQUIRE) >> (slot & 7)) & 1))
        return VN_FB_MISS;
    *fd = b->fd;
    *uoff = off;
    *usize = size;
    return VN_FB_SERVED;
}

/* preadv file bytes [start, end) of a read at `offset` from fd at file_at; 1 if all came. */
static int flush_run(const struct vn_chain *c, uint64_t offset, int fd, uint64_t file_at,
                     uint64_t start, uint64_t end)
{
    int64_t got = vn_chain_preadv(c, OUT_HEADER_SIZE + (start - offset), fd, (int64_t)file_at,
                                  end - start);
    return got == (int64_t)(end - start);
}

/* The chunks covering file bytes [offset, end) of an inode record, as FileChunks.covering
 * finds them. With c == NULL only checks that C can serve them all; otherwise copies them
 * (and zeroes the holes) into the reply's data area. VN_FB_SERVED or a fallback reason. */
static int read_range(const struct vn_fs *fs, const uint8_t *rec, uint64_t offset,
                      uint64_t end, const struct vn_chain *c)
{
    uint64_t start = ld64(rec + 48), count = ld32(rec + 56);
    const struct vn_fs_section *fc = &fs->file_chunks;
    if (start > fc->count || count > fc->count - start)
        return VN_FB_IMAGE;
    uint64_t cs = fs->chunk_size;
    uint64_t first = offset - offset % cs;
    /* Bisect for the first record at or after `first`. Every record Python's bisect
     * touches must name a chunk in range, as Python checks. */
    uint64_t lo = 0, hi = count;
    while (lo < hi) {
        uint64_t mid = (lo + hi) / 2;
        const uint8_t *e = record(fs, fc, start + mid);
        if (ld32(e + 8) >= fs->chunks.count)
            return VN_FB_IMAGE;
        if (ld64(e) < first)
            lo = mid + 1;
        else
            hi = mid;
    }
    uint64_t pos = offset; /* next file byte to produce */
    uint64_t prev_end = 0;
    /* Adjacent chunks stored back to back in one cache file become one preadv. */
    int run_fd = -1;
    uint64_t run_file = 0, run_start = 0; /* cache file offset and file position of the run */
    for (; lo < count; lo++) {
        const uint8_t *e = record(fs, fc, start + lo);
        uint64_t foff = ld64(e);
        uint32_t cidx = ld32(e + 8);
        if (cidx >= fs->chunks.count)
            return VN_FB_IMAGE;
        if (foff >= end)
            break;
        /* Aligned, increasing, one chunk per slot: else leave it to Python. */
        if (foff % cs || foff < prev_end)
            return VN_FB_IMAGE;
        prev_end = foff + cs;
        int fd;
        uint64_t uoff;
        uint32_t usize;
        int rc = chunk_location(fs, cidx, &fd, &uoff, &usize);
        if (rc != VN_FB_SERVED)
            return rc;
        uint64_t need = (end < foff + cs ? end : foff + cs) - foff;
        if (usize < need)
            return VN_FB_IMAGE; /* ImageFS: a chunk shorter than its slot's share, EIO */
        uint64_t a = foff > offset ? foff : offset;
        uint64_t b = foff + usize < end ? foff + usize : end;
        if (c != NULL) {
            uint64_t file_at = uoff + (a - foff);
            if (run_fd >= 0 && (fd != run_fd || a != pos || file_at != run_file + (pos - run_start))) {
                if (!flush_run(c, offset, run_fd, run_file, run_start, pos))
                    return VN_FB_IO;
                run_fd = -1;
            }
            if (a > pos)
                stream_zero(c, OUT_HEADER_SIZE + (pos - offset), a - pos);
            if (run_fd < 0) {
                run_fd = fd;
                run_file = file_at;
                run_start = a;
            }
        }
        pos = b;
    }
    if (c != NULL) {
        if (run_fd >= 0 && !flush_run(c, offset, run_fd, run_file, run_start, pos))
            return VN_FB_IO;
        if (pos < end)
            stream_zero(c, OUT_HEADER_SIZE + (pos - offset), end - pos);
    }
    return VN_FB_SERVED;
}

/* Server._read + ImageFS.read for data that is all holes or verified cached chunks. */
static int serve_read(struct vn_fs *fs, const struct vn_chain *c, const struct req *r,
                      uint32_t *written)
{
    uint8_t in[READ_IN_SIZE];
    uint8_t hdr[OUT_HEADER_SIZE];
    if (r->body_len < READ_IN_SIZE)
        return VN_FB_MALFORMED;
    vn_chain_read(c, IN_HEADER_SIZE, in, sizeof(in));
    uint64_t offset = ld64(in + 8);
    uint64_t size = ld32(in + 16);
    if (offset > MAX_OFFSET)
        return VN_FB_MALFORMED; /* EINVAL */
    if (size > r->max_reply - OUT_HEADER_SIZE)
        size = r->max_reply - OUT_HEADER_SIZE;
    if (size > fs->max_write)
        size = fs->max_write;
    uint64_t n = 0;
    if (size > 0) { /* Python asks the file system nothing for an empty read */
        const uint8_t *rec = inode_rec(fs, r->nodeid);
        if (rec == NULL || (ld32(rec) & S_IFMT_) != S_IFREG_)
            return VN_FB_INODE; /* ESTALE, EISDIR or EINVAL */
        if (!fs->read_enabled)
            return VN_FB_MISS;
        uint64_t fsize = ld64(rec + 16);
        uint64_t end = offset + size < fsize ? offset + size : fsize;
        if (offset < end) {
            /* Check everything first, so a fallback leaves the guest's buffer alone. */
            int rc = read_range(fs, rec, offset, end, NULL);
            if (rc == VN_FB_SERVED)
                rc = read_range(fs, rec, offset, end, c);
            if (rc != VN_FB_SERVED)
                return rc;
            n = end - offset;
        }
    }
    pack_out_header(hdr, (uint32_t)(OUT_HEADER_SIZE + n), 0, r->unique);
    vn_chain_write(c, 0, hdr, sizeof(hdr)); /* last: the data is in place */
    *written = (uint32_t)(OUT_HEADER_SIZE + n);
    fs->read_bytes += n;
    return VN_FB_SERVED;
}

/* ---- OPEN, FLUSH, RELEASE, OPENDIR, RELEASEDIR, READDIR, READDIRPLUS -------------------------------------- */

/* ImageFS.open of a non-directory for reading, or ImageFS.opendir of a directory: fh 0
 * and the policy's flags. The wrong type (EISDIR, ENOTDIR), writes and O_TRUNC (EROFS) and
 * bad nodes (ESTALE) are Python's to answer. */
static int serve_open(struct vn_fs *fs, const struct vn_chain *c, const struct req *r, int dir,
                      uint32_t *written)
{
    uint8_t out[OUT_HEADER_SIZE + OPEN_OUT_SIZE] = {0};
    uint8_t in[OPEN_IN_SIZE];
    if (r->body_len < OPEN_IN_SIZE || r->max_reply < sizeof(out))
        return VN_FB_MALFORMED;
    const uint8_t *rec = inode_rec(fs, r->nodeid);
    if (rec == NULL || ((ld32(rec) & S_IFMT_) == S_IFDIR_) != dir)
        return VN_FB_INODE;
    if (!dir) {
        vn_chain_read(c, IN_HEADER_SIZE, in, sizeof(in));
        uint32_t flags = ld32(in);
        if ((flags & O_ACCMODE_) != 0 || (flags & O_TRUNC_))
            return VN_FB_OPCODE; /* EROFS, from Python */
    }
    st32(out + OUT_HEADER_SIZE + 8, dir ? fs->opendir_flags : fs->open_flags);
    pack_out_header(out, sizeof(out), 0, r->unique);
    *written = reply(c, out, sizeof(out));
    return VN_FB_SERVED;
}

/* Handles hold nothing: RELEASEDIR, RELEASE and FLUSH only check their arguments' size,
 * as Python does. */
static int serve_noop(const struct vn_chain *c, const struct req *r, uint32_t in_size,
                      uint32_t *written)
{
    uint8_t out[OUT_HEADER_SIZE];
    if (r->body_len < in_size)
        return VN_FB_MALFORMED;
    pack_out_header(out, sizeof(out), 0, r->unique);
    *written = reply(c, out, sizeof(out));
    return VN_FB_SERVED;
}

/* Position p of a directory listing: 0 is ".", 1 is "..", p >= 2 is stored entry p - 2;
 * its cookie (d_off) is p + 1, as ImageFS.readdir numbers them. */
struct dent {
    uint64_t ino;
    const uint8_t *name;
    uint32_t nlen;
    uint32_t type;
};

static int dent_at(const struct vn_fs *fs, const uint8_t *dir, uint64_t self, uint64_t first,
                   uint64_t p, struct dent *d)
{
    if (p < 2) {
        d->ino = p == 0 ? self : ld32(dir + 44); /* ".." is the parent field, unchecked */
        d->name = (const uint8_t *)"..";
        d->nlen = (uint32_t)p + 1; /* "." is the first byte of ".." */
        d->type = DT_DIR_;
        return 1;
    }
    const uint8_t *e = record(fs, &fs->dirents, first + p - 2);
    if (e == NULL)
        return 0;
    d->ino = ld32(e + 16);
    d->nlen = ld16(e + 20);
    d->type = e[22];
    d->name = string_at(fs, ld64(e + 8), d->nlen);
    return d->name != NULL;
}

/* Server._readdir / _readdirplus over ImageFS.readdir. Two passes: the first finds how
 * many records fit and checks every bootstrap reference they (and the first record that
 * does not fit) use, so anything Python would fail on is left to Python untouched; the
 * second writes the records and, for READDIRPLUS, counts each entry as a lookup. */
static int serve_readdir(struct vn_fs *fs, const struct vn_chain *c, const struct req *r,
                         int plus, uint32_t *written)
{
    uint8_t in[READ_IN_SIZE];
    if (r->body_len < READ_IN_SIZE)
        return VN_FB_MALFORMED;
    vn_chain_read(c, IN_HEADER_SIZE, in, sizeof(in));
    uint64_t offset = ld64(in + 8);
    uint64_t room = ld32(in + 16);
    if (room > r->max_reply - OUT_HEADER_SIZE)
        room = r->max_reply - OUT_HEADER_SIZE;
    if (room > fs->max_write)
        room = fs->max_write;
    const uint8_t *dir = inode_rec(fs, r->nodeid);
    if (dir == NULL || (ld32(dir) & S_IFMT_) != S_IFDIR_)
        return VN_FB_INODE;
    uint64_t first = ld64(dir + 48), end = (uint64_t)ld32(dir + 56) + 2;
    if (first > fs->dirents.count || end - 2 > fs->dirents.count - first)
        return VN_FB_IMAGE;
    uint32_t head = plus ? DIRENTPLUS_HEAD : DIRENT_HEAD;
    uint64_t used = 0, n = 0;
    struct dent d;
    for (uint64_t p = offset; p < end; p++, n++) {
        if (!dent_at(fs, dir, r->nodeid, first, p, &d) || d.nlen > NAME_MAX_)
            return VN_FB_IMAGE; /* a lying name: Python's (and the buffer below is sized) */
        uint64_t rec = (head + d.nlen + 7) & ~7u;
        if (used + rec > room)
            break;
        if (plus && p >= 2 && inode_rec(fs, d.ino) == NULL) {
            if (n == 0)
                return VN_FB_IMAGE; /* Python answers ESTALE */
            break;                  /* Python sends what it has */
        }
        used += rec;
    }
    uint8_t buf[DIRENTPLUS_HEAD + NAME_MAX_ + 8];
    uint64_t at = OUT_HEADER_SIZE;
    for (uint64_t p = offset; p < offset + n; p++) {
        dent_at(fs, dir, r->nodeid, first, p, &d);
        uint32_t rec = (head + d.nlen + 7) & ~7u;
        memset(buf, 0, rec);
        uint8_t *de = buf;
        if (plus) {
            if (p >= 2) {
                st64(buf, d.ino);
                st64(buf + 16, fs->entry_sec);
                st64(buf + 24, fs->attr_sec);
                st32(buf + 32, fs->entry_nsec);
                st32(buf + 36, fs->attr_nsec);
                pack_attr(buf + 40, d.ino, inode_rec(fs, d.ino), fs->chunk_size);
            }
            de = buf + ENTRY_OUT_SIZE;
        }
        st64(de, d.ino);
        st64(de + 8, p + 1);
        st32(de + 16, d.nlen);
        st32(de + 20, d.type);
        memcpy(de + DIRENT_HEAD, d.name, d.nlen);
        vn_chain_write(c, at, buf, rec);
        at += rec;
    }
    if (plus)
        for (uint64_t p = offset < 2 ? 2 : offset; p < offset + n; p++) {
            dent_at(fs, dir, r->nodeid, first, p, &d);
            vn_fs_lookup_add(fs, d.ino);
        }
    uint8_t out[OUT_HEADER_SIZE];
    pack_out_header(out, (uint32_t)at, 0, r->unique);
    vn_chain_write(c, 0, out, sizeof(out));
    *written = (uint32_t)at;
    return VN_FB_SERVED;
}

/* ---- dispatch --------------------------------------------------------------------------- */

int vn_fs_serve(struct vn_fs *fs, const struct vn_chain *c, uint32_t *written)
{
    if (!fs->valid)
        return VN_FB_DISABLED;
    struct req r;
    int rc = parse_header(c, &r);
    if (rc != VN_FB_SERVED)
        return rc;
    int slot; /* which served counter; also which handler */
    switch (r.opcode) {
    case OP_LOOKUP: slot = VN_FS_LOOKUP; break;
    case OP_GETATTR: slot = VN_FS_GETATTR; break;
    case OP_READ: slot = VN_FS_READ; break;
    case OP_OPEN: slot = VN_FS_OPEN; break;
    case OP_FLUSH: slot = VN_FS_FLUSH; break;
    case OP_RELEASE: slot = VN_FS_RELEASE; break;
    case OP_OPENDIR: slot = VN_FS_OPENDIR; break;
    case OP_READDIR: slot = VN_FS_READDIR; break;
    case OP_READDIRPLUS: slot = VN_FS_READDIRPLUS; break;
    case OP_RELEASEDIR: slot = VN_FS_RELEASEDIR; break;
    default: return VN_FB_OPCODE;
    }
    if (!__atomic_load_n(&fs->initialized, __ATOMIC_ACQUIRE))
        return VN_FB_NOT_INIT;
    switch (slot) {
    case VN_FS_LOOKUP: rc = serve_lookup(fs, c, &r, written); break;
    case VN_FS_GETATTR: rc = serve_getattr(fs, c, &r, written); break;
    case VN_FS_READ: rc = serve_read(fs, c, &r, written); break;
    case VN_FS_OPEN: rc = serve_open(fs, c, &r, 0, written); break;
    case VN_FS_FLUSH: rc = serve_noop(c, &r, FLUSH_IN_SIZE, written); break;
    case VN_FS_OPENDIR: rc = serve_open(fs, c, &r, 1, written); break;
    case VN_FS_READDIR: rc = serve_readdir(fs, c, &r, 0, written); break;
    case VN_FS_READDIRPLUS: rc = serve_readdir(fs, c, &r, 1, written); break;
    default: rc = serve_noop(c, &r, RELEASE_IN_SIZE, written); break; /* RELEASE(DIR) */
    }
    if (rc == VN_FB_SERVED)
        fs->served[slot]++;
    return rc;
}

int vn_fs_drain(struct vn_fs *fs, struct vn_vq *vq, struct vn_chain *chains,
                uint32_t max_chains, struct vn_iov *iovs, uint32_t iov_cap, uint32_t iov_room,
                int call_fd)
{
    uint16_t heads[ROUND_MAX];
    uint32_t lens[ROUND_MAX];
    uint32_t nleft = 0, used_iov = 0, popped = 0;
    while (nleft < max_chains && popped < DRAIN_BUDGET) {
        if (nleft > 0 && iov_cap - used_iov < iov_room)
            break; /* a long chain might not fit: let the caller take a fresh pool */
        uint32_t want = max_chains - nleft;
        if (want > ROUND_MAX)
            want = ROUND_MAX;
        int n = vn_vq_pop(vq, chains + nleft, want, iovs + used_iov, iov_cap - used_iov);
        if (n <= 0)
            break;
        popped += (uint32_t)n;
        uint32_t k = 0, base = nleft;
        for (uint32_t i = 0; i < (uint32_t)n; i++) {
            struct vn_chain *c = &chains[base + i];
            uint32_t written = 0;
            int rc = vn_fs_serve(fs, c, &written);
            fs->fallbacks[rc]++;
            if (rc == VN_FB_SERVED) {
                heads[k] = c->head;
                lens[k] = written;
                k++;
            } else {
                /* Compact: left-overs keep their order and their iovecs. */
                if (nleft != base + i)
                    chains[nleft] = *c;
                nleft++;
            }
        }
        if (nleft > 0) {
            const struct vn_chain *last = &chains[nleft - 1];
            used_iov = (uint32_t)(last->iov + last->nread + last->nwrite - iovs);
        } else {
            used_iov = 0;
        }
        if (k > 0) {
            vn_vq_push_many(vq, heads, lens, k);
            if (call_fd >= 0 && vn_vq_need_notify(vq)) {
                uint64_t one = 1;
                ssize_t w = write(call_fd, &one, sizeof(one)); /* EAGAIN: one is pending */
                (void)w;
                fs->notifies++;
            }
        }
    }
    return (int)nleft;
}

/* ---- lookup counts ------------------------------------------------------------------------ */

void vn_fs_lookup_add(struct vn_fs *fs, uint64_t ino)
{
    if (ino >= fs->nlookups)
        return;
    uint32_t *p = &fs->lookups[ino];
    uint32_t v = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v != UINT32_MAX &&
           !__atomic_compare_exchange_n(p, &v, v + 1, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

void vn_fs_forget(struct vn_fs *fs, uint64_t ino, uint64_t nlookup)
{
    if (ino >= fs->nlookups)
        return;
    uint32_t *p = &fs->lookups[ino];
    uint32_t v = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        uint32_t nv = v > nlookup ? (uint32_t)(v - nlookup) : 0;
        if (__atomic_compare_exchange_n(p, &v, nv, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return;
    }
}

uint32_t vn_fs_lookup_count(const struct vn_fs *fs, uint64_t ino)
{
    return ino < fs->nlookups ? __atomic_load_n(&fs->lookups[ino], __ATOMIC_RELAXED) : 0;
}

void vn_fs_lookups_clear(struct vn_fs *fs)
{
    for (uint64_t i = 0; i < fs->nlookups; i++)
        __atomic_store_n(&fs->lookups[i], 0, __ATOMIC_RELAXED);
}
