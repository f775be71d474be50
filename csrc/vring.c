/* Guest memory table and split virtqueue core; see vring.h for the contract. */
#include "vring.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "virtio split rings are little-endian; this core assumes a little-endian host"
#endif

_Static_assert(sizeof(struct vn_iov) == sizeof(struct iovec), "vn_iov must match iovec");
_Static_assert(offsetof(struct vn_iov, len) == offsetof(struct iovec, iov_len), "iovec");
_Static_assert(sizeof(((struct vn_vq *)0)->inflight_map) * 8 == VN_MAX_QUEUE_SIZE, "map");

#define DESC_F_NEXT 1u
#define DESC_F_WRITE 2u
#define DESC_F_INDIRECT 4u
#define AVAIL_F_NO_INTERRUPT 1u
#define USED_F_NO_NOTIFY 1u

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

/* ---- memory table ------------------------------------------------------------------- */

void vn_mem_init(struct vn_memtable *m) { m->nregions = 0; }

int vn_mem_add(struct vn_memtable *m, uint64_t gpa, uint64_t size, uint64_t uaddr, uint8_t *host)
{
    if (size == 0 || gpa + size < gpa || uaddr + size < uaddr || host == NULL)
        return -EINVAL;
    if (m->nregions >= VN_MAX_REGIONS)
        return -ENOSPC;
    uint32_t i = 0;
    while (i < m->nregions && m->regions[i].gpa < gpa)
        i++;
    /* Neighbours must not overlap the new range. */
    if (i > 0 && m->regions[i - 1].gpa + m->regions[i - 1].size > gpa)
        return -EEXIST;
    if (i < m->nregions && gpa + size > m->regions[i].gpa)
        return -EEXIST;
    memmove(&m->regions[i + 1], &m->regions[i], (m->nregions - i) * sizeof(m->regions[0]));
    m->regions[i] = (struct vn_region){gpa, size, uaddr, host};
    m->nregions++;
    return 0;
}

int vn_mem_remove(struct vn_memtable *m, uint64_t gpa, uint64_t size)
{
    for (uint32_t i = 0; i < m->nregions; i++) {
        if (m->regions[i].gpa == gpa && m->regions[i].size == size) {
            memmove(&m->regions[i], &m->regions[i + 1],
                    (m->nregions - i - 1) * sizeof(m->regions[0]));
            m->nregions--;
            return 0;
        }
    }
    return -ENOENT;
}

/* Region containing gpa (binary search), or NULL. */
static const struct vn_region *find_region(const struct vn_memtable *m, uint64_t gpa)
{
    uint32_t lo = 0, hi = m->nregions;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const struct vn_region *r = &m->regions[mid];
        if (gpa < r->gpa)
            hi = mid;
        else if (gpa - r->gpa >= r->size)
            lo = mid + 1;
        else
            return r;
    }
    return NULL;
}

int vn_mem_translate(const struct vn_memtable *m, uint64_t gpa, uint64_t len,
                     struct vn_iov *iov, uint32_t cap)
{
    if (gpa + len < gpa)
        return -VN_E_DESC_OVERFLOW;
    uint32_t n = 0;
    while (len > 0) {
        const struct vn_region *r = find_region(m, gpa);
        if (r == NULL)
            return -VN_E_DESC_ADDR;
        uint64_t off = gpa - r->gpa;
        uint64_t chunk = r->size - off;
        if (chunk > len)
            chunk = len;
        if (n >= cap)
            return -VN_E_TOO_MANY_IOV;
        iov[n].base = r->host + off;
        iov[n].len = (size_t)chunk;
        n++;
        gpa += chunk;
        len -= chunk;
    }
    return (int)n;
}

uint8_t *vn_mem_host(const struct vn_memtable *m, uint64_t gpa, uint64_t len)
{
    if (gpa + len < gpa)
        return NULL;
    const struct vn_region *r = find_region(m, gpa);
    if (r == NULL || len > r->size - (gpa - r->gpa))
        return NULL;
    return r->host + (gpa - r->gpa);
}

int vn_mem_uva_to_gpa(const struct vn_memtable *m, uint64_t uva, uint64_t len, uint64_t *gpa)
{
    if (uva + len < uva)
        return -EINVAL;
    for (uint32_t i = 0; i < m->nregions; i++) {
        const struct vn_region *r = &m->regions[i];
        if (uva >= r->uaddr && uva - r->uaddr < r->size && len <= r->size - (uva - r->uaddr)) {
            *gpa = r->gpa + (uva - r->uaddr);
            return 0;
        }
    }
    return -EFAULT;
}

int vn_map(int fd, uint64_t offset, uint64_t size, uint8_t **host)
{
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t skew = offset % page;
    if (size == 0 || size + skew < size || offset + size < offset)
        return -EINVAL;
    void *p = mmap(NULL, size + skew, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd,
                   (off_t)(offset - skew));
    if (p == MAP_FAILED)
        return -errno;
    *host = (uint8_t *)p + skew;
    return 0;
}

int vn_unmap(uint8_t *host, uint64_t offset, uint64_t size)
{
    uint64_t skew = offset % (uint64_t)sysconf(_SC_PAGESIZE);
    return munmap(host - skew, size + skew) == 0 ? 0 : -errno;
}

/* ---- ring access ---------------------------------------------------------------------- */
/* Offsets inside the split-ring tables (virtio 1.x, section 2.7). */
#define AVAIL_FLAGS(vq) ((uint16_t *)(vq)->avail)
#define AVAIL_IDX(vq) ((uint16_t *)((vq)->avail + 2))
#define AVAIL_RING(vq) ((uint16_t *)((vq)->avail + 4))
#define USED_EVENT(vq) ((uint16_t *)((vq)->avail + 4 + 2 * (vq)->size))
#define USED_FLAGS(vq) ((uint16_t *)(vq)->used)
#define USED_IDX(vq) ((uint16_t *)((vq)->used + 2))
#define USED_RING(vq) ((vq)->used + 4)
#define AVAIL_EVENT(vq) ((uint16_t *)((vq)->used + 4 + 8 * (vq)->size))

static int map_tables(struct vn_vq *vq, const struct vn_memtable *m)
{
    uint64_t n = vq->size;
    if ((vq->desc_gpa & 15) || (vq->avail_gpa & 1) || (vq->used_gpa & 3))
        return VN_E_RING_ADDR;
    uint8_t *d = vn_mem_host(m, vq->desc_gpa, 16 * n);
    uint8_t *a = vn_mem_host(m, vq->avail_gpa, 6 + 2 * n);
    uint8_t *u = vn_mem_host(m, vq->used_gpa, 6 + 8 * n);
    if (d == NULL || a == NULL || u == NULL)
        return VN_E_RING_ADDR;
    vq->desc = d;
    vq->avail = a;
    vq->used = u;
    vq->mem = m;
    return VN_OK;
}

int vn_vq_start(struct vn_vq *vq, const struct vn_memtable *m, uint32_t size,
                uint16_t last_avail_idx, uint64_t desc_gpa, uint64_t avail_gpa,
                uint64_t used_gpa, int event_idx)
{
    vq->ready = 0;
    vq->broken = 0;
    if (size == 0 || size > VN_MAX_QUEUE_SIZE || (size & (size - 1)))
        return -VN_E_INVAL;
    vq->size = size;
    vq->desc_gpa = desc_gpa;
    vq->avail_gpa = avail_gpa;
    vq->used_gpa = used_gpa;
    int rc = map_tables(vq, m);
    if (rc != VN_OK)
        return -rc;
    vq->last_avail_idx = last_avail_idx;
    /* The guest's used idx survives a back-end restart; continue from it. */
    vq->used_idx = __atomic_load_n(USED_IDX(vq), __ATOMIC_ACQUIRE);
    vq->signalled_used = 0;
    vq->signalled_valid = 0;
    vq->event_idx = event_idx ? 1 : 0;
    vq->inflight = 0;
    memset(vq->inflight_map, 0, sizeof(vq->inflight_map));
    vq->ready = 1;
    return 0;
}

int vn_vq_remap(struct vn_vq *vq, const struct vn_memtable *m)
{
    if (!vq->ready)
        return -VN_E_NOT_READY;
    int rc = map_tables(vq, m);
    if (rc != VN_OK) {
        vq->ready = 0;
        vq->broken = (uint8_t)rc;
        return -rc;
    }
    return 0;
}

void vn_vq_stop(struct vn_vq *vq)
{
    vq->ready = 0;
    vq->desc = vq->avail = vq->used = NULL;
    vq->mem = NULL;
}

static inline int head_busy(const struct vn_vq *vq, uint16_t head)
{
    return (vq->inflight_map[head >> 3] >> (head & 7)) & 1;
}

/* Read one descriptor exactly once: the guest may rewrite it while we look at it. */
static inline struct desc load_desc(const uint8_t *p)
{
    struct desc d;
    memcpy(&d, p, sizeof(d));
    __asm__ volatile("" ::: "memory");
    return d;
}

struct walk {
    struct vn_iov *iov;
    uint32_t cap;
    uint32_t n;
    uint32_t nread;
    uint64_t read_len, write_len;
    int seen_write;
};

static int add_buffer(const struct vn_memtable *m, struct walk *w, const struct desc *d)
{
    int writable = (d->flags & DESC_F_WRITE) != 0;
    if (!writable && w->seen_write)
        return VN_E_WRITE_ORDER;
    if (d->addr + d->len < d->addr)
        return VN_E_DESC_OVERFLOW;
    if (writable)
        w->seen_write = 1;
    if (d->len == 0)
        return VN_OK;
    int k = vn_mem_translate(m, d->addr, d->len, w->iov + w->n, w->cap - w->n);
    if (k < 0)
        return -k;
    w->n += (uint32_t)k;
    if (writable) {
        w->write_len += d->len;
    } else {
        w->read_len += d->len;
        w->nread += (uint32_t)k;
    }
    if (w->read_len > UINT32_MAX || w->write_len > UINT32_MAX)
        return VN_E_CHAIN_LEN;
    return VN_OK;
}

/* Walk the chain at head into w; VN_OK or a reason code. */
static int walk_chain(const struct vn_vq *vq, uint16_t head, struct walk *w)
{
    const struct vn_memtable *m = vq->mem;
    const uint8_t *table = vq->desc;
    uint32_t table_size = vq->size;
    uint32_t idx = head;
    uint32_t seen = 0;
    int indirect = 0;

    for (;;) {
        if (++seen > table_size)
            return VN_E_CHAIN_LOOP;
        struct desc d = load_desc(table + 16 * (size_t)idx);
        if (d.flags & DESC_F_INDIRECT) {
            if (indirect)
                return VN_E_NESTED_INDIRECT;
            if (d.flags & DESC_F_NEXT)
                return VN_E_INDIRECT_NEXT;
            if (d.len == 0 || (d.len & 15) || d.len / 16 > vq->size)
                return VN_E_INDIRECT_LEN;
            if (d.addr + d.len < d.addr)
                return VN_E_DESC_OVERFLOW;
            table = vn_mem_host(m, d.addr, d.len);
            if (table == NULL)
                return VN_E_INDIRECT_ADDR;
            table_size = d.len / 16;
            indirect = 1;
            idx = 0;
            seen = 0;
            continue;
        }
        int rc = add_buffer(m, w, &d);
        if (rc != VN_OK)
            return rc;
        if (!(d.flags & DESC_F_NEXT))
            return VN_OK;
        idx = d.next;
        if (idx >= table_size)
            return VN_E_NEXT_RANGE;
    }
}

int vn_vq_pop(struct vn_vq *vq, struct vn_chain *chains, uint32_t max_chains,
              struct vn_iov *iovs, uint32_t iov_cap)
{
    if (vq->broken)
        return -(int)vq->broken;
    if (!vq->ready)
        return -VN_E_NOT_READY;
    uint16_t avail_idx = __atomic_load_n(AVAIL_IDX(vq), __ATOMIC_ACQUIRE);
    uint16_t pending = (uint16_t)(avail_idx - vq->last_avail_idx);
    if (pending > vq->size) {
        vq->broken = VN_E_AVAIL_IDX;
        return -VN_E_AVAIL_IDX;
    }
    uint32_t n = 0, used_iov = 0;
    int err = VN_OK;
    while (n < max_chains && pending > 0) {
        uint16_t slot = vq->last_avail_idx & (uint16_t)(vq->size - 1);
        uint16_t head = __atomic_load_n(&AVAIL_RING(vq)[slot], __ATOMIC_RELAXED);
        if (head >= vq->size) {
            err = VN_E_HEAD_RANGE;
            break;
        }
        if (head_busy(vq, head)) {
            err = VN_E_HEAD_BUSY;
            break;
        }
        struct walk w = {.iov = iovs + used_iov, .cap = iov_cap - used_iov};
        int rc = walk_chain(vq, head, &w);
        if (rc == VN_E_TOO_MANY_IOV && n > 0)
            break; /* the pool is full: the caller pops the rest with a fresh pool */
        if (rc != VN_OK) {
            err = rc;
            break;
        }
        chains[n] = (struct vn_chain){
            .head = head,
            .nread = w.nread,
            .nwrite = w.n - w.nread,
            .read_len = (uint32_t)w.read_len,
            .write_len = (uint32_t)w.write_len,
            .iov = w.iov,
        };
        vq->inflight_map[head >> 3] |= (uint8_t)(1u << (head & 7));
        vq->inflight++;
        used_iov += w.n;
        vq->last_avail_idx++;
        pending--;
        n++;
    }
    if (vq->event_idx)
        __atomic_store_n(AVAIL_EVENT(vq), vq->last_avail_idx, __ATOMIC_RELAXED);
    if (err != VN_OK) {
        vq->broken = (uint8_t)err;
        if (n == 0)
            return -err;
    }
    return (int)n;
}

static int write_used(struct vn_vq *vq, uint16_t head, uint32_t len)
{
    if (head >= vq->size || !head_busy(vq, head))
        return VN_E_PUSH_HEAD;
    uint8_t *elem = USED_RING(vq) + 8 * (size_t)(vq->used_idx & (uint16_t)(vq->size - 1));
    uint32_t id = head;
    memcpy(elem, &id, 4);
    memcpy(elem + 4, &len, 4);
    vq->inflight_map[head >> 3] &= (uint8_t)~(1u << (head & 7));
    vq->inflight--;
    vq->used_idx++;
    return VN_OK;
}

int vn_vq_push_many(struct vn_vq *vq, const uint16_t *heads, const uint32_t *lens, uint32_t n)
{
    if (!vq->ready)
        return -VN_E_NOT_READY;
    int err = VN_OK;
    uint32_t i;
    for (i = 0; i < n; i++) {
        err = write_used(vq, heads[i], lens[i]);
        if (err != VN_OK)
            break;
    }
    if (i > 0)
        __atomic_store_n(USED_IDX(vq), vq->used_idx, __ATOMIC_RELEASE);
    return err == VN_OK ? 0 : -err;
}

int vn_vq_push(struct vn_vq *vq, uint16_t head, uint32_t len)
{
    return vn_vq_push_many(vq, &head, &len, 1);
}

int vn_vq_need_notify(struct vn_vq *vq)
{
    if (!vq->ready)
        return 0;
    /* Our used->idx store must be visible before we read the guest's wishes. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!vq->event_idx)
        return !(__atomic_load_n(AVAIL_FLAGS(vq), __ATOMIC_RELAXED) & AVAIL_F_NO_INTERRUPT);
    uint16_t old = vq->signalled_used, now = vq->used_idx;
    int valid = vq->signalled_valid;
    vq->signalled_used = now;
    vq->signalled_valid = 1;
    if (!valid)
        return 1;
    uint16_t event = __atomic_load_n(USED_EVENT(vq), __ATOMIC_RELAXED);
    return (uint16_t)(now - event - 1) < (uint16_t)(now - old);
}

int vn_vq_enable_notify(struct vn_vq *vq)
{
    if (!vq->ready)
        return 0;
    if (vq->event_idx)
        __atomic_store_n(AVAIL_EVENT(vq), vq->last_avail_idx, __ATOMIC_RELAXED);
    else
        __atomic_store_n(USED_FLAGS(vq), 0, __ATOMIC_RELAXED);
    /* Publish the wish before re-reading avail->idx, or a kick may be lost. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return __atomic_load_n(AVAIL_IDX(vq), __ATOMIC_ACQUIRE) != vq->last_avail_idx;
}

void vn_vq_disable_notify(struct vn_vq *vq)
{
    if (vq->ready && !vq->event_idx)
        __atomic_store_n(USED_FLAGS(vq), USED_F_NO_NOTIFY, __ATOMIC_RELAXED);
}

static const char *const reasons[VN_E_MAX] = {
    [VN_OK] = "ok",
    [VN_E_NOT_READY] = "ring not started",
    [VN_E_RING_ADDR] = "ring tables outside guest memory or misaligned",
    [VN_E_AVAIL_IDX] = "avail index moved by more than the queue size",
    [VN_E_HEAD_RANGE] = "head index out of range",
    [VN_E_NEXT_RANGE] = "next index out of range",
    [VN_E_CHAIN_LOOP] = "descriptor chain longer than its table (loop)",
    [VN_E_DESC_ADDR] = "buffer outside guest memory",
    [VN_E_DESC_OVERFLOW] = "buffer address + length wraps around",
    [VN_E_WRITE_ORDER] = "readable descriptor after a writable one",
    [VN_E_NESTED_INDIRECT] = "nested indirect descriptor",
    [VN_E_INDIRECT_LEN] = "bad indirect table length",
    [VN_E_INDIRECT_ADDR] = "indirect table outside one guest memory region",
    [VN_E_INDIRECT_NEXT] = "indirect descriptor with NEXT flag",
    [VN_E_TOO_MANY_IOV] = "chain needs too many iovecs",
    [VN_E_CHAIN_LEN] = "chain total length exceeds 4 GiB",
    [VN_E_HEAD_BUSY] = "head published again while in flight",
    [VN_E_PUSH_HEAD] = "push of a head that is not in flight",
    [VN_E_INVAL] = "invalid argument",
};

const char *vn_vq_strerror(int reason)
{
    if (reason < 0)
        reason = -reason;
    return reason < VN_E_MAX ? reasons[reason] : "unknown error";
}

/* ---- chains as byte streams ------------------------------------------------------------ */

/* Copy between buf and the stream over iov[0..n) starting at offset; to_iov picks direction. */
static size_t copy_stream(const struct vn_iov *iov, uint32_t n, uint64_t offset, uint8_t *buf,
                          size_t len, int to_iov)
{
    size_t done = 0;
    for (uint32_t i = 0; i < n && done < len; i++) {
        if (offset >= iov[i].len) {
            offset -= iov[i].len;
            continue;
        }
        size_t chunk = iov[i].len - (size_t)offset;
        if (chunk > len - done)
            chunk = len - done;
        if (to_iov)
            memcpy(iov[i].base + offset, buf + done, chunk);
        else
            memcpy(buf + done, iov[i].base + offset, chunk);
        done += chunk;
        offset = 0;
    }
    return done;
}

size_t vn_chain_read(const struct vn_chain *c, uint64_t offset, uint8_t *buf, size_t len)
{
    return copy_stream(c->iov, c->nread, offset, buf, len, 0);
}

size_t vn_chain_write(const struct vn_chain *c, uint64_t offset, const uint8_t *buf, size_t len)
{
    return copy_stream(c->iov + c->nread, c->nwrite, offset, (uint8_t *)buf, len, 1);
}

int vn_chain_write_iov(const struct vn_chain *c, uint64_t offset, uint64_t len,
                       struct vn_iov *out, uint32_t cap)
{
    const struct vn_iov *iov = c->iov + c->nread;
    uint32_t n = 0;
    for (uint32_t i = 0; i < c->nwrite && len > 0; i++) {
        if (offset >= iov[i].len) {
            offset -= iov[i].len;
            continue;
        }
        if (n >= cap)
            return -VN_E_TOO_MANY_IOV;
        uint64_t chunk = iov[i].len - offset;
        if (chunk > len)
            chunk = len;
        out[n].base = iov[i].base + offset;
        out[n].len = (size_t)chunk;
        n++;
        len -= chunk;
        offset = 0;
    }
    return (int)n;
}

int64_t vn_chain_preadv(const struct vn_chain *c, uint64_t offset, int fd, int64_t file_off,
                        uint64_t len)
{
    struct vn_iov iov[64];
    int64_t total = 0;
    while (len > 0) {
        int n = vn_chain_write_iov(c, offset, len, iov, 64);
        if (n == -VN_E_TOO_MANY_IOV)
            n = 64; /* partial list: read what it covers, then continue */
        if (n <= 0)
            break;
        uint64_t want = 0;
        for (int i = 0; i < n; i++)
            want += iov[i].len;
        ssize_t got = preadv(fd, (const struct iovec *)iov, n, file_off);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return total > 0 ? total : -errno;
        }
        total += got;
        if ((uint64_t)got < want || got == 0)
            break; /* end of file */
        offset += (uint64_t)got;
        file_off += got;
        len -= (uint64_t)got;
    }
    return total;
}
