/* Guest memory table and split virtqueue core.
 *
 * Everything a guest (or front-end) supplies is checked here before use: ring addresses,
 * descriptor addresses and lengths, chain lengths, indirect tables, avail indices. A bad
 * chain marks the queue broken with a reason code; nothing here aborts or writes outside
 * the buffers the guest handed us. Little-endian hosts only (virtio 1.x rings are LE).
 *
 * A C fast path serves a whole kick without returning to Python:
 *
 *     do {
 *         while ((n = vn_vq_pop(vq, chains, 64, iovs, cap)) > 0) {
 *             for (i = 0; i < n; i++) {            // answer each chain
 *                 vn_chain_read(&chains[i], 0, req, sizeof req);
 *                 lens[i] = reply_into(&chains[i]);   // vn_chain_write / _preadv
 *                 heads[i] = chains[i].head;
 *             }
 *             vn_vq_push_many(vq, heads, lens, n);
 *         }
 *     } while (n == 0 && vn_vq_enable_notify(vq));
 *     if (vn_vq_need_notify(vq)) write(call_fd, &one, 8);
 *
 * Chains are independent of the ring once popped; a chain may be pushed much later, from
 * any order, as long as one thread at a time touches a given vq.
 */
#ifndef VN_VRING_H
#define VN_VRING_H
#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
#define VN_MAX_REGIONS 509
#define VN_MAX_QUEUE_SIZE 32768

/* Reason codes: pop/push/start return their negation; vq->broken holds the positive value. */
enum vn_vq_error {
    VN_OK = 0,
    VN_E_NOT_READY = 1,       /* ring not started (no addresses) */
    VN_E_RING_ADDR = 2,       /* ring tables not inside one region, or misaligned */
    VN_E_AVAIL_IDX = 3,       /* avail->idx moved by more than the queue size */
    VN_E_HEAD_RANGE = 4,      /* head index >= queue size */
    VN_E_NEXT_RANGE = 5,      /* next index >= table size */
    VN_E_CHAIN_LOOP = 6,      /* chain longer than its table (a loop) */
    VN_E_DESC_ADDR = 7,       /* buffer outside guest memory */
    VN_E_DESC_OVERFLOW = 8,   /* addr + len wraps around */
    VN_E_WRITE_ORDER = 9,     /* readable descriptor after a writable one */
    VN_E_NESTED_INDIRECT = 10,/* indirect descriptor inside an indirect table */
    VN_E_INDIRECT_LEN = 11,   /* indirect table empty, not a multiple of 16 or too long */
    VN_E_INDIRECT_ADDR = 12,  /* indirect table not inside one region */
    VN_E_INDIRECT_NEXT = 13,  /* INDIRECT together with NEXT */
    VN_E_TOO_MANY_IOV = 14,   /* chain needs more iovecs than the caller's pool holds */
    VN_E_CHAIN_LEN = 15,      /* readable or writable total exceeds 4 GiB - 1 */
    VN_E_HEAD_BUSY = 16,      /* head published again while still in flight */
    VN_E_PUSH_HEAD = 17,      /* push of a head that is not in flight (caller bug) */
    VN_E_INVAL = 18,          /* bad argument from the caller (size, alignment) */
    VN_E_MAX = 19
};

/* One guest memory region: guest-physical range, front-end virtual address, our mapping. */
struct vn_region {
    uint64_t gpa;
    uint64_t size;
    uint64_t uaddr;
    uint8_t *host;
};

/* Regions sorted by gpa, never overlapping. */
struct vn_memtable {
    uint32_t nregions;
    struct vn_region regions[VN_MAX_REGIONS];
};

/* Layout-compatible with struct iovec (checked in vring.c), so C paths may preadv into it. */
struct vn_iov {
    uint8_t *base;
    size_t len;
};

/* A popped descriptor chain: iov[0..nread) readable, then iov[nread..nread+nwrite) writable. */
struct vn_chain {
    uint16_t head;
    uint16_t _pad;
    uint32_t nread;
    uint32_t nwrite;
    uint32_t read_len;
    uint32_t write_len;
    struct vn_iov *iov;
};

struct vn_vq {
    uint32_t size;            /* queue size, power of two */
    uint16_t last_avail_idx;  /* next avail entry to pop */
    uint16_t used_idx;        /* next used entry to fill (published) */
    uint16_t signalled_used;  /* used idx at the last notification (EVENT_IDX) */
    uint8_t signalled_valid;
    uint8_t event_idx;
    uint8_t ready;
    uint8_t broken;           /* enum vn_vq_error, 0 = fine */
    uint32_t inflight;        /* popped, not yet pushed */
    uint64_t desc_gpa, avail_gpa, used_gpa;
    uint8_t *desc, *avail, *used;   /* host pointers into guest memory */
    const struct vn_memtable *mem;
    uint8_t inflight_map[4096];     /* one bit per head (VN_MAX_QUEUE_SIZE / 8) */
};

/* Memory table (the caller maps; these only record and look up). -errno on error. */
void vn_mem_init(struct vn_memtable *m);
int vn_mem_add(struct vn_memtable *m, uint64_t gpa, uint64_t size, uint64_t uaddr, uint8_t *host);
int vn_mem_remove(struct vn_memtable *m, uint64_t gpa, uint64_t size);
/* Guest-physical range -> iovecs (split at region edges). Returns count, or -VN_E_*. */
int vn_mem_translate(const struct vn_memtable *m, uint64_t gpa, uint64_t len,
                     struct vn_iov *iov, uint32_t cap);
/* Contiguous host pointer for [gpa, gpa+len) inside one region, or NULL. */
uint8_t *vn_mem_host(const struct vn_memtable *m, uint64_t gpa, uint64_t len);
/* Front-end virtual address -> guest-physical, if [uva, uva+len) is inside one region. */
int vn_mem_uva_to_gpa(const struct vn_memtable *m, uint64_t uva, uint64_t len, uint64_t *gpa);

/* mmap a shared region fd at file offset (any alignment); munmap it. -errno on error. */
int vn_map(int fd, uint64_t offset, uint64_t size, uint8_t **host);
int vn_unmap(uint8_t *host, uint64_t offset, uint64_t size);

/* Start a ring: translate its tables, read used->idx, clear in-flight state. */
int vn_vq_start(struct vn_vq *vq, const struct vn_memtable *m, uint32_t size,
                uint16_t last_avail_idx, uint64_t desc_gpa, uint64_t avail_gpa,
                uint64_t used_gpa, int event_idx);
/* Re-translate the tables after the memory table changed (indices kept). */
int vn_vq_remap(struct vn_vq *vq, const struct vn_memtable *m);
void vn_vq_stop(struct vn_vq *vq);

/* Pop up to max_chains chains; their iovecs go into iovs[0..iov_cap).
 * Returns the number popped (>= 0), or -reason when the queue is (now) broken and nothing
 * was popped. Chains popped before a bad one are returned; the next call reports the error. */
int vn_vq_pop(struct vn_vq *vq, struct vn_chain *chains, uint32_t max_chains,
              struct vn_iov *iovs, uint32_t iov_cap);
/* Publish used elements {head, len}; one release barrier before the used->idx store. */
int vn_vq_push(struct vn_vq *vq, uint16_t head, uint32_t len);
int vn_vq_push_many(struct vn_vq *vq, const uint16_t *heads, const uint32_t *lens, uint32_t n);
/* Whether the guest wants an interrupt now (EVENT_IDX or NO_INTERRUPT). 1 = notify. */
int vn_vq_need_notify(struct vn_vq *vq);
/* Ask for kicks again; returns 1 if buffers arrived meanwhile (pop again), 0 if none. */
int vn_vq_enable_notify(struct vn_vq *vq);
void vn_vq_disable_notify(struct vn_vq *vq);
const char *vn_vq_strerror(int reason);

/* A chain as byte streams. Return bytes copied (short at the end of the stream). */
size_t vn_chain_read(const struct vn_chain *c, uint64_t offset, uint8_t *buf, size_t len);
size_t vn_chain_write(const struct vn_chain *c, uint64_t offset, const uint8_t *buf, size_t len);
/* Writable iovecs covering stream bytes [offset, offset+len): count, or -VN_E_TOO_MANY_IOV. */
int vn_chain_write_iov(const struct vn_chain *c, uint64_t offset, uint64_t len,
                       struct vn_iov *out, uint32_t cap);
/* preadv(fd, file_off) into the writable stream at offset: bytes read or -errno. */
int64_t vn_chain_preadv(const struct vn_chain *c, uint64_t offset, int fd, int64_t file_off,
                        uint64_t len);
/* CDEF-END */

#endif
