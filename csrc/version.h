#ifndef VN_VERSION_H
#define VN_VERSION_H
#include <stdint.h>

/* CDEF-BEGIN */
/* ABI version of the C core; virtiofsd_nydus/_native.py refuses a mismatch. */
uint32_t vn_abi_version(void);
/* CDEF-END */

#define VN_ABI_VERSION 1u
#endif
