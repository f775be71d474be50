"""The FUSE kernel ABI (include/uapi/linux/fuse.h, protocol 7.38+), as a virtio-fs server sees it.

Every struct is a precompiled little-endian ``struct.Struct`` whose size is asserted
against the kernel's. Field order follows the header so ``pack(*fields)`` reads like C.
Nothing here does I/O or holds state.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

KERNEL_VERSION: Final = 7
KERNEL_MINOR_VERSION: Final = 38  # what we answer (virtiofsd does the same)
MIN_KERNEL_MINOR_VERSION: Final = 27  # virtiofsd rejects older guests with EPROTO
ROOT_ID: Final = 1
NAME_MAX: Final = 255
PAGE_SIZE: Final = 4096


class Opcode(IntEnum):
    LOOKUP = 1
    FORGET = 2  # no reply
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42  # no reply
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52


MAX_OPCODE: Final = max(Opcode)

# INIT flags. Bits 32..63 travel in init_in/init_out.flags2 when INIT_EXT is set.
ASYNC_READ: Final = 1 << 0
POSIX_LOCKS: Final = 1 << 1
FILE_OPS: Final = 1 << 2
ATOMIC_O_TRUNC: Final = 1 << 3
EXPORT_SUPPORT: Final = 1 << 4
BIG_WRITES: Final = 1 << 5
DONT_MASK: Final = 1 << 6
SPLICE_WRITE: Final = 1 << 7
SPLICE_MOVE: Final = 1 << 8
SPLICE_READ: Final = 1 << 9
FLOCK_LOCKS: Final = 1 << 10
HAS_IOCTL_DIR: Final = 1 << 11
AUTO_INVAL_DATA: Final = 1 << 12
DO_READDIRPLUS: Final = 1 << 13
READDIRPLUS_AUTO: Final = 1 << 14
ASYNC_DIO: Final = 1 << 15
WRITEBACK_CACHE: Final = 1 << 16
NO_OPEN_SUPPORT: Final = 1 << 17
PARALLEL_DIROPS: Final = 1 << 18
HANDLE_KILLPRIV: Final = 1 << 19
POSIX_ACL: Final = 1 << 20
ABORT_ERROR: Final = 1 << 21
MAX_PAGES: Final = 1 << 22
CACHE_SYMLINKS: Final = 1 << 23
NO_OPENDIR_SUPPORT: Final = 1 << 24
EXPLICIT_INVAL_DATA: Final = 1 << 25
MAP_ALIGNMENT: Final = 1 << 26
SUBMOUNTS: Final = 1 << 27
HANDLE_KILLPRIV_V2: Final = 1 << 28
SETXATTR_EXT: Final = 1 << 29
INIT_EXT: Final = 1 << 30
INIT_RESERVED: Final = 1 << 31
SECURITY_CTX: Final = 1 << 32
HAS_INODE_DAX: Final = 1 << 33
CREATE_SUPP_GROUP: Final = 1 << 34
HAS_EXPIRE_ONLY: Final = 1 << 35
DIRECT_IO_ALLOW_MMAP: Final = 1 << 36
PASSTHROUGH: Final = 1 << 37
NO_EXPORT_SUPPORT: Final = 1 << 38
HAS_RESEND: Final = 1 << 39

# fuse_open_out.open_flags
FOPEN_DIRECT_IO: Final = 1 << 0
FOPEN_KEEP_CACHE: Final = 1 << 1
FOPEN_NONSEEKABLE: Final = 1 << 2
FOPEN_CACHE_DIR: Final = 1 << 3
FOPEN_STREAM: Final = 1 << 4
FOPEN_NOFLUSH: Final = 1 << 5

# fuse_attr.flags
ATTR_SUBMOUNT: Final = 1 << 0
ATTR_DAX: Final = 1 << 1

# fuse_getattr_in.getattr_flags
GETATTR_FH: Final = 1 << 0
# fuse_read_in.read_flags
READ_LOCKOWNER: Final = 1 << 1
# fuse_release_in.release_flags
RELEASE_FLUSH: Final = 1 << 0
# fuse_fsync_in.fsync_flags
FSYNC_FDATASYNC: Final = 1 << 0
# fuse_setattr_in.valid
FATTR_MODE: Final = 1 << 0
FATTR_UID: Final = 1 << 1
FATTR_GID: Final = 1 << 2
FATTR_SIZE: Final = 1 << 3
FATTR_ATIME: Final = 1 << 4
FATTR_MTIME: Final = 1 << 5
FATTR_FH: Final = 1 << 6
FATTR_ATIME_NOW: Final = 1 << 7
FATTR_MTIME_NOW: Final = 1 << 8
FATTR_LOCKOWNER: Final = 1 << 9
FATTR_CTIME: Final = 1 << 10
FATTR_KILL_SUIDGID: Final = 1 << 11

UNIQUE_RESEND: Final = 1 << 63

# Headers. in_header's last u32 is u16 total_extlen (units of 8 bytes) + u16 padding.
IN_HEADER: Final = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER: Final = struct.Struct("<IiQ")  # len error unique

_ATTR_FMT: Final = "QQQQQQIIIIIIIIII"
# ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid gid rdev
# blksize flags
ATTR: Final = struct.Struct("<" + _ATTR_FMT)
# nodeid generation entry_valid attr_valid entry_valid_nsec attr_valid_nsec attr...
ENTRY_OUT: Final = struct.Struct("<QQQQII" + _ATTR_FMT)
# attr_valid attr_valid_nsec dummy attr...
ATTR_OUT: Final = struct.Struct("<QII" + _ATTR_FMT)
# blocks bfree bavail files ffree bsize namelen frsize padding spare[6]
STATFS_OUT: Final = struct.Struct("<QQQQQIIII24x")

FORGET_IN: Final = struct.Struct("<Q")  # nlookup
FORGET_ONE: Final = struct.Struct("<QQ")  # nodeid nlookup
BATCH_FORGET_IN: Final = struct.Struct("<II")  # count dummy
GETATTR_IN: Final = struct.Struct("<IIQ")  # getattr_flags dummy fh
SETATTR_IN: Final = struct.Struct("<IIQQQQQQIIIIIIII")
# valid padding fh size lock_owner atime mtime ctime atimensec mtimensec ctimensec mode
# unused4 uid gid unused5
MKNOD_IN: Final = struct.Struct("<IIII")  # mode rdev umask padding
MKDIR_IN: Final = struct.Struct("<II")  # mode umask
RENAME_IN: Final = struct.Struct("<Q")  # newdir
RENAME2_IN: Final = struct.Struct("<QII")  # newdir flags padding
LINK_IN: Final = struct.Struct("<Q")  # oldnodeid
OPEN_IN: Final = struct.Struct("<II")  # flags open_flags
CREATE_IN: Final = struct.Struct("<IIII")  # flags mode umask open_flags
OPEN_OUT: Final = struct.Struct("<QIi")  # fh open_flags backing_id
RELEASE_IN: Final = struct.Struct("<QIIQ")  # fh flags release_flags lock_owner
FLUSH_IN: Final = struct.Struct("<QIIQ")  # fh unused padding lock_owner
READ_IN: Final = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags pad
WRITE_IN: Final = struct.Struct("<QQIIQII")  # fh offset size write_flags lock_owner flags pad
WRITE_OUT: Final = struct.Struct("<II")  # size padding
FSYNC_IN: Final = struct.Struct("<QII")  # fh fsync_flags padding
SETXATTR_IN: Final = struct.Struct("<IIII")  # size flags setxattr_flags padding (SETXATTR_EXT)
SETXATTR_IN_COMPAT: Final = struct.Struct("<II")  # size flags
GETXATTR_IN: Final = struct.Struct("<II")  # size padding
GETXATTR_OUT: Final = struct.Struct("<II")  # size padding
ACCESS_IN: Final = struct.Struct("<II")  # mask padding
INIT_IN_COMPAT: Final = struct.Struct("<IIII")  # major minor max_readahead flags (< 7.36)
INIT_IN: Final = struct.Struct("<IIIII44x")  # ... flags2 unused[11]
# major minor max_readahead flags max_background congestion_threshold max_write time_gran
# max_pages map_alignment flags2 max_stack_depth unused[6]
INIT_OUT: Final = struct.Struct("<IIIIHHIIHHII24x")
INTERRUPT_IN: Final = struct.Struct("<Q")  # unique
FALLOCATE_IN: Final = struct.Struct("<QQQII")  # fh offset length mode padding
LSEEK_IN: Final = struct.Struct("<QQII")  # fh offset whence padding
LSEEK_OUT: Final = struct.Struct("<Q")  # offset
COPY_FILE_RANGE_IN: Final = struct.Struct("<QQQQQQQ")
# fh_in off_in nodeid_out fh_out off_out len flags
SYNCFS_IN: Final = struct.Struct("<Q")  # padding
DIRENT: Final = struct.Struct("<QQII")  # ino off namelen type, then name, padded to 8
DIRENTPLUS: Final = struct.Struct("<QQQQII" + _ATTR_FMT + "QQII")  # entry_out + dirent

_SIZES: Final = {
    IN_HEADER: 40,
    OUT_HEADER: 16,
    ATTR: 88,
    ENTRY_OUT: 128,
    ATTR_OUT: 104,
    STATFS_OUT: 80,
    FORGET_IN: 8,
    FORGET_ONE: 16,
    BATCH_FORGET_IN: 8,
    GETATTR_IN: 16,
    SETATTR_IN: 88,
    MKNOD_IN: 16,
    MKDIR_IN: 8,
    RENAME2_IN: 16,
    OPEN_IN: 8,
    CREATE_IN: 16,
    OPEN_OUT: 16,
    RELEASE_IN: 24,
    FLUSH_IN: 24,
    READ_IN: 40,
    WRITE_IN: 40,
    FSYNC_IN: 16,
    SETXATTR_IN: 16,
    GETXATTR_IN: 8,
    ACCESS_IN: 8,
    INIT_IN_COMPAT: 16,
    INIT_IN: 64,
    INIT_OUT: 64,
    INTERRUPT_IN: 8,
    FALLOCATE_IN: 32,
    LSEEK_IN: 24,
    LSEEK_OUT: 8,
    COPY_FILE_RANGE_IN: 56,
    DIRENT: 24,
    DIRENTPLUS: 152,
}
for _s, _n in _SIZES.items():
    assert _s.size == _n, (_s.format, _s.size, _n)

# Where the name starts inside a dirent / direntplus record.
DIRENT_NAME_OFFSET: Final = DIRENT.size
DIRENTPLUS_NAME_OFFSET: Final = DIRENTPLUS.size


def dirent_size(namelen: int) -> int:
    """FUSE_DIRENT_SIZE: header + name, rounded up to 8 bytes."""
    return (DIRENT.size + namelen + 7) & ~7


def direntplus_size(namelen: int) -> int:
    return (DIRENTPLUS.size + namelen + 7) & ~7


def split_flags(flags64: int) -> tuple[int, int]:
    """A 64-bit INIT flag set as (flags, flags2)."""
    return flags64 & 0xFFFFFFFF, flags64 >> 32


# lseek whence values the kernel forwards (SEEK_SET/CUR/END are handled in the guest).
SEEK_DATA: Final = 3
SEEK_HOLE: Final = 4
