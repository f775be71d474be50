"""The C fast path against the Python server, reply byte for reply byte."""

from __future__ import annotations

import itertools
import os
import struct

import pytest

from tests.fastpath.conftest import RigFactory
from tests.fastpath.rig import Req, Result, Rig
from tests.fuse import wire
from tests.fuse.images import CS
from virtiofsd_nydus.fuse import abi
from virtiofsd_nydus.fuse.abi import Opcode
from virtiofsd_nydus.fuse.filesystem import CachePolicy

MIB = 1 << 20


def getattr_req(ino: int, **kw: object) -> Req:
    return Req(wire.request(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0), nodeid=ino), **kw)  # type: ignore[arg-type]


def lookup_req(parent: int, name: bytes, **kw: object) -> Req:
    return Req(wire.request(Opcode.LOOKUP, name + b"\0", nodeid=parent), **kw)  # type: ignore[arg-type]


def read_req(ino: int, offset: int, size: int, **kw: object) -> Req:
    kw.setdefault("write", 16 + size)
    body = abi.READ_IN.pack(0, offset, size, 0, 0, 0, 0)
    return Req(wire.request(Opcode.READ, body, nodeid=ino), **kw)  # type: ignore[arg-type]


def dir_req(op: int, ino: int, offset: int = 0, size: int = 4096, **kw: object) -> Req:
    kw.setdefault("write", 16 + size)
    body = abi.READ_IN.pack(0, offset, size, 0, 0, 0, 0)
    return Req(wire.request(op, body, nodeid=ino), **kw)  # type: ignore[arg-type]


def opendir_req(ino: int) -> Req:
    return Req(wire.request(Opcode.OPENDIR, abi.OPEN_IN.pack(os.O_RDONLY, 0), nodeid=ino))


def releasedir_req(ino: int) -> Req:
    return Req(wire.request(Opcode.RELEASEDIR, abi.RELEASE_IN.pack(0, 0, 0, 0), nodeid=ino))


def check_identical(results: list[Result], *, all_served: bool = True) -> None:
    for i, r in enumerate(results):
        assert r.reply == r.expected, f"request {i}: served={r.served}"
        if all_served:
            assert r.served, f"request {i} fell back"


def check_falls_back(rig: Rig, reqs: list[Req]) -> list[Result]:
    """Every request is left to Python, whose reply the guest gets unchanged."""
    res = rig.run(reqs)
    check_identical(res, all_served=False)
    assert not any(r.served for r in res)
    return res


def test_getattr_every_inode(rig: Rig) -> None:
    n = rig.bs.inode_count
    res = rig.run([getattr_req(i) for i in range(1, n + 1)])
    check_identical(res)
    stale = rig.run([getattr_req(0), getattr_req(n + 1), getattr_req(1 << 63)])
    check_identical(stale, all_served=False)
    assert not any(r.served for r in stale)
    assert rig.fp.stats()["fallback_inode"] == 3
    assert rig.fp.stats()["served_GETATTR"] == n


@pytest.mark.parametrize("policy", [CachePolicy.ALWAYS, CachePolicy.NEVER, CachePolicy.AUTO])
def test_lookup_every_name_and_misses(make_rig: RigFactory, policy: CachePolicy) -> None:
    rig = make_rig(policy=policy)
    reqs = []
    for _, ino in rig.bs.walk():
        node = rig.bs.inode(ino)
        if not node.is_dir:
            reqs.append(lookup_req(ino, b"x"))  # ENOTDIR, served in C
            continue
        names = [name for name, _ in rig.bs.readdir(ino)]
        for name in names:
            reqs.append(lookup_req(ino, name))
            for miss in (name + b"x", name[:-1] + b"\xff", b"\x01" + name, name[:8] + b"~"):
                if miss not in names:
                    reqs.append(lookup_req(ino, miss))
        reqs.append(lookup_req(ino, b"zzzzzzzzzzzzzzzzzz"))
        reqs.append(lookup_req(ino, b"\xff" * 255))
    res = rig.run(reqs)
    check_identical(res)
    assert rig.fp.lookups == rig.ref_fs.lookups
    assert sum(rig.fp.lookups.values()) > 300


def test_bad_names_fall_back(rig: Rig) -> None:
    bad = [b"", b".", b"..", b"a/b", b"/", b"x" * 256]
    reqs = [lookup_req(1, n) for n in bad]
    reqs.append(Req(wire.request(Opcode.LOOKUP, b"abc", nodeid=1)))  # no NUL
    reqs.append(Req(wire.request(Opcode.LOOKUP, b"y" * 300, nodeid=1)))  # no NUL, long
    check_falls_back(rig, reqs)
    assert rig.fp.stats()["fallback_bad_name"] == len(reqs)
    # A name exactly NAME_MAX long is fine (absent here: a negative entry).
    check_identical(rig.run([lookup_req(1, b"n" * 255)]))


def _read_points(size: int) -> list[int]:
    pts = {0, 1, CS - 1, CS, CS + 1, 2 * CS - 1, 2 * CS, size - 1, size, size + 1, size + CS}
    return sorted(p for p in pts if p >= 0)


READ_SIZES = [1, 2, CS - 1, CS, CS + 1, 3 * CS + 7, 128 * 1024, MIB]


def test_read_every_edge(rig: Rig) -> None:
    reqs = []
    for path in (b"/empty", b"/one", b"/page", b"/page1", b"/odd", b"/forty", b"/holey"):
        ino = rig.bs.resolve(path)
        assert ino is not None
        size = rig.bs.inode(ino).size
        for off, n in itertools.product(_read_points(size), READ_SIZES):
            reqs.append(read_req(ino, off, n, write=16 + n))
    res = rig.run(reqs)
    check_identical(res)
    assert rig.fp.stats()["served_READ"] == len(reqs)


def test_read_big_file_and_holes(rig: Rig) -> None:
    reqs = []
    for path in (b"/big", b"/holey", b"/tailhole"):
        ino = rig.bs.resolve(path)
        assert ino is not None
        size = rig.bs.inode(ino).size
        for off in (0, CS - 1, CS, 5 * CS + 3, size - MIB, size - 1):
            if off >= 0:
                reqs.append(read_req(ino, off, MIB))
    check_identical(rig.run(reqs))


@pytest.mark.parametrize(
    "layout",
    [
        (3, 13, 5000),  # the reply header itself split
        (16, 1, 4095, 7, 9000),
        (17,) * 300,  # many descriptors: more iovecs than one preadv takes
        (16, 0, 100000),  # an empty descriptor in the middle
    ],
)
def test_read_into_odd_buffers(rig: Rig, layout: tuple[int, ...]) -> None:
    reqs = []
    for path in (b"/forty", b"/holey", b"/odd"):
        ino = rig.bs.resolve(path)
        assert ino is not None
        for off in (0, 1, CS - 3, 2 * CS + 5):
            reqs.append(read_req(ino, off, 64 * 1024, write=layout))
    check_identical(rig.run(reqs))


def test_short_reply_buffer_clamps_the_read(rig: Rig) -> None:
    ino = rig.bs.resolve(b"/forty")
    assert ino is not None
    reqs = [read_req(ino, 100, 50000, write=w) for w in (16, 17, 100, 4111, 4112, 4113)]
    check_identical(rig.run(reqs))


def test_split_request_descriptors(rig: Rig) -> None:
    ino = rig.bs.resolve(b"/forty")
    assert ino is not None
    reqs = [
        read_req(ino, 4000, 9000, read_split=(1, 39)),
        read_req(ino, 4000, 9000, read_split=(40, 1, 2, 3)),
        getattr_req(ino, read_split=(10, 10, 10, 10, 10)),
        lookup_req(1, b"abcdefgh1", read_split=(44,)),
        lookup_req(1, b"abcdefgh1", read_split=(40, 3, 1)),
    ]
    check_identical(rig.run(reqs))


def test_cold_chunks_fall_back_then_hit(rig: Rig) -> None:
    ino = rig.bs.resolve(b"/cold")
    assert ino is not None
    first = rig.run([read_req(ino, 0, 3 * CS)])
    check_identical(first, all_served=False)
    assert not first[0].served
    assert rig.fp.stats()["fallback_cache_miss"] == 1
    # Python fetched and verified chunks 0..2: C serves them now, not chunk 3.
    again = rig.run([read_req(ino, 0, 3 * CS), read_req(ino, 2 * CS, 2 * CS)])
    assert again[0].served and not again[1].served
    check_identical(again, all_served=False)


def test_hole_reads_need_no_cache(make_rig: RigFactory) -> None:
    rig = make_rig(warm=False)
    ino = rig.bs.resolve(b"/holey")
    assert ino is not None
    res = rig.run([read_req(ino, CS, 2 * CS), read_req(ino, 0, CS)])
    assert res[0].served and not res[1].served
    check_identical(res, all_served=False)


def test_nothing_served_before_init_or_after_destroy(make_rig: RigFactory) -> None:
    rig = make_rig(init=False)
    ino = rig.bs.resolve(b"/forty")
    assert ino is not None
    reqs = [getattr_req(1), lookup_req(1, b"forty"), read_req(ino, 0, 10)]
    res = rig.run(reqs)
    assert not any(r.served for r in res)
    assert rig.fp.stats()["fallback_not_initialized"] == 3
    rig.init()
    assert all(r.served for r in rig.run(reqs))
    destroy = Req(wire.request(Opcode.DESTROY), ref=False)
    rig.run([destroy])
    assert not rig.server.initialized
    assert not any(r.served for r in rig.run([getattr_req(1)]))


def test_malformed_requests_fall_back(rig: Rig) -> None:
    ino = rig.bs.resolve(b"/forty")
    assert ino is not None
    good = read_req(ino, 0, 100).data
    lying_len = struct.pack("<I", len(good) + 1) + good[4:]
    huge_ext = good[:36] + struct.pack("<H", 0xFFFF) + good[38:]
    short_body = wire.request(Opcode.READ, b"\0" * 39, nodeid=ino)
    getattr_short = wire.request(Opcode.GETATTR, b"\0" * 15, nodeid=ino)
    big_off = wire.request(Opcode.READ, abi.READ_IN.pack(0, 1 << 63, 10, 0, 0, 0, 0), nodeid=ino)
    reqs = [
        Req(lying_len),
        Req(huge_ext),
        Req(short_body),
        Req(getattr_short),
        Req(big_off),
        Req(good[:39]),
        Req(good, write=15),
        Req(wire.request(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0), nodeid=1), write=100),
        Req(wire.request(Opcode.LOOKUP, b"forty\0", nodeid=1), write=143),
    ]
    res = rig.run(reqs)
    assert not any(r.served for r in res)
    check_identical(res, all_served=False)
    # Extensions trailing the arguments are cut off, as Python does: still served.
    ext = wire.request(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0) + bytes(8), extlen=1)
    check_identical(rig.run([Req(ext)]))


def test_wrong_types_and_other_ops_fall_back(rig: Rig) -> None:
    d = rig.bs.resolve(b"/dir")
    link = rig.bs.resolve(b"/link")
    assert d is not None and link is not None
    reqs = [
        read_req(d, 0, 10),
        read_req(link, 0, 10),
        Req(wire.request(Opcode.READLINK, nodeid=link)),
        Req(wire.request(Opcode.STATFS, nodeid=1)),
        Req(wire.request(Opcode.OPEN, abi.OPEN_IN.pack(os.O_RDONLY, 0), nodeid=d)),
    ]
    res = rig.run(reqs)
    assert not any(r.served for r in res)
    check_identical(res, all_served=False)
    stats = rig.fp.stats()
    assert stats["fallback_inode"] == 3 and stats["fallback_opcode"] == 2  # OPEN of a dir: inode


def test_lookup_counts_shared_with_python_forget(rig: Rig) -> None:
    forty = rig.bs.resolve(b"/forty")
    d = rig.bs.resolve(b"/dir")
    assert forty is not None and d is not None
    rig.run([lookup_req(1, b"forty")] * 5 + [lookup_req(1, b"dir")] * 2)
    assert dict(rig.fp.lookups) == {forty: 5, d: 2}
    forget = wire.request(Opcode.FORGET, abi.FORGET_IN.pack(3), nodeid=forty)
    batch = wire.request(
        Opcode.BATCH_FORGET,
        abi.BATCH_FORGET_IN.pack(2, 0) + abi.FORGET_ONE.pack(forty, 1) + abi.FORGET_ONE.pack(d, 9),
    )
    rig.run([Req(forget, ref=False), Req(batch, ref=False)])
    assert dict(rig.fp.lookups) == {forty: 1}
    # Python lookups (READDIRPLUS) count in the same array.
    rdp = wire.request(Opcode.READDIRPLUS, abi.READ_IN.pack(0, 0, 4096, 0, 0, 0, 0), nodeid=1)
    rig.run([Req(rdp, ref=False)])
    assert rig.fp.lookups[forty] == 2
    rig.init()  # a new session forgets everything
    assert dict(rig.fp.lookups) == {}


def test_mixed_batches_complete_every_chain_once(rig: Rig) -> None:
    ino = rig.bs.resolve(b"/odd")
    d = rig.bs.resolve(b"/dir")
    assert ino is not None and d is not None
    reqs = []
    for i in range(200):
        k = i % 5
        if k == 0:
            reqs.append(getattr_req(1 + i % rig.bs.inode_count))
        elif k == 1:
            reqs.append(Req(wire.request(Opcode.STATFS, nodeid=1)))
        elif k == 2:
            reqs.append(read_req(ino, i * 7, 5000))
        elif k == 3:
            reqs.append(read_req(d, 0, 10))  # EISDIR, from Python
        else:
            reqs.append(lookup_req(1, b"odd"))
    res = rig.run(reqs)
    assert len(res) == 200
    check_identical(res, all_served=False)
    served = sum(r.served for r in res)
    assert served == 120  # GETATTR, READ of a file, LOOKUP; STATFS and READ of a dir: Python


def test_call_fd_written_when_c_serves(rig: Rig) -> None:
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        rig.q.call_fd = efd
        rig.run([getattr_req(1)] * 3)
        assert os.eventfd_read(efd) >= 1
        assert rig.fp.stats()["notifies"] >= 1
    finally:
        rig.q.call_fd = None
        os.close(efd)


def test_device_keeps_the_session_in_step(make_rig: RigFactory) -> None:
    """VirtioFsDevice: INIT answered by Python turns the C path on; reset turns it off."""
    from virtiofsd_nydus.daemon.virtiofs import VirtioFsDevice

    rig = make_rig(init=False)
    dev = VirtioFsDevice(rig.server, fastpath=rig.fp)
    rig.q.fast_drain = None
    dev.queue_started(rig.q)
    drain = rig.q.fast_drain  # the fast path, behind the bootstrap RSS budget's check
    assert drain is rig.fp or getattr(drain, "fastpath", None) is rig.fp
    rig.device = dev  # left-overs go through the device's own path
    init = wire.request(
        Opcode.INIT, wire.init_body(flags=wire.KERNEL_FLAGS, flags2=wire.KERNEL_FLAGS2)
    )
    rig.ref.handle(init, wire.BIG)
    assert not rig.run([getattr_req(1)])[0].served
    rig.run([Req(init, ref=False)])
    assert rig.server.initialized
    res = rig.run([getattr_req(1), lookup_req(1, b"forty"), Req(wire.request(Opcode.STATFS))])
    assert [r.served for r in res] == [True, True, False]
    check_identical(res, all_served=False)
    rig.run([Req(wire.request(Opcode.DESTROY), ref=False)])
    assert not rig.run([getattr_req(1)])[0].served
    rig.run([Req(init, ref=False)])
    assert rig.run([getattr_req(1)])[0].served
    dev.reset()  # the front-end went away: the session ends in Python and in C
    assert not rig.run([getattr_req(1)])[0].served


def test_lookup_counts_stay_exact_under_concurrency(rig: Rig) -> None:
    """Python lookups and forgets on another thread while C counts: no update is lost."""
    import threading

    forty = rig.bs.resolve(b"/forty")
    assert forty is not None
    n = 3000

    def python_side() -> None:
        for _ in range(n):
            rig.fs.lookup(1, b"forty")
        for _ in range(n // 2):
            rig.fs.forget(forty, 1)

    t = threading.Thread(target=python_side)
    t.start()
    for _ in range(6):
        rig.run([lookup_req(1, b"forty", ref=False)] * (n // 6))
    t.join()
    assert rig.fp.lookups[forty] == n + n - n // 2


def test_event_idx_notifications(make_rig: RigFactory) -> None:
    rig = make_rig()
    rig.q.start(1024, 0, rig.drv.desc, rig.drv.avail, rig.drv.used, True)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        rig.q.call_fd = efd
        rig.drv.set_used_event(0xFFFF)  # "interrupt me only at used index 0xFFFF"
        rig.run([getattr_req(1)] * 4)  # the first completion always notifies (no baseline)
        assert os.eventfd_read(efd) == 1
        rig.run([getattr_req(1)] * 4)
        with pytest.raises(BlockingIOError):
            os.eventfd_read(efd)  # the guest did not ask
        rig.drv.set_used_event(rig.drv.used_idx())  # "interrupt me at the next completion"
        rig.run([getattr_req(1)])
        assert os.eventfd_read(efd) == 1
    finally:
        rig.q.call_fd = None
        os.close(efd)


@pytest.mark.parametrize("policy", [CachePolicy.ALWAYS, CachePolicy.NEVER])
def test_directories_listed_at_every_edge(make_rig: RigFactory, policy: CachePolicy) -> None:
    """OPENDIR, READDIR(PLUS) from every offset into rooms of every size, RELEASEDIR."""
    rig = make_rig(policy=policy)
    reqs: list[Req] = []
    for _, ino in rig.bs.walk():
        if not rig.bs.inode(ino).is_dir:
            continue
        n = rig.bs.dir_entry_count(ino) + 2  # with "." and ".."
        reqs += [opendir_req(ino), releasedir_req(ino)]
        for op in (Opcode.READDIR, Opcode.READDIRPLUS):
            for off in sorted({0, 1, 2, 3, n // 2, n - 1, n, n + 1, 1 << 63, (1 << 64) - 1}):
                for size in (0, 31, 32, 152, 160, 400, 4096, 65536):
                    reqs.append(dir_req(op, ino, off, size))
            # The guest's buffer, not the asked size, limits the reply.
            reqs.append(dir_req(op, ino, 0, 4096, write=16 + 300))
            reqs.append(dir_req(op, ino, 0, 4096, write=(100, 100, 4000)))
    res = rig.run(reqs)
    check_identical(res)
    # READDIRPLUS counts each entry it returns (but "." and "..") as a lookup, as Python.
    assert rig.fp.lookups == rig.ref_fs.lookups
    assert sum(rig.fp.lookups.values()) > 300
    stats = rig.fp.stats()
    for op in ("OPENDIR", "RELEASEDIR", "READDIR", "READDIRPLUS"):
        assert stats[f"served_{op}"] > 0


def test_directory_ops_on_other_nodes_fall_back(rig: Rig) -> None:
    forty = rig.bs.resolve(b"/forty")
    assert forty is not None
    bad = [forty, 0, rig.bs.inode_count + 1]
    reqs = [opendir_req(i) for i in bad]
    reqs += [dir_req(op, i) for op in (Opcode.READDIR, Opcode.READDIRPLUS) for i in bad]
    reqs += [
        Req(wire.request(Opcode.OPENDIR, b"\0" * 7, nodeid=1)),
        Req(wire.request(Opcode.READDIRPLUS, b"\0" * 39, nodeid=1)),
        Req(wire.request(Opcode.RELEASEDIR, b"\0" * 23, nodeid=1)),
        Req(wire.request(Opcode.OPENDIR, abi.OPEN_IN.pack(0, 0), nodeid=1), write=31),
    ]
    check_falls_back(rig, reqs)
    # RELEASEDIR holds nothing to check: any node, served.
    check_identical(rig.run([releasedir_req(forty), releasedir_req(1 << 40)]))


@pytest.mark.parametrize("policy", [CachePolicy.ALWAYS, CachePolicy.NEVER, CachePolicy.AUTO])
def test_open_flush_release(make_rig: RigFactory, policy: CachePolicy) -> None:
    """Read-only OPEN of every non-directory in C; writes, O_TRUNC and directories: Python."""
    rig = make_rig(policy=policy)
    served: list[Req] = []
    left: list[Req] = []
    modes = {
        os.O_RDONLY: True,
        os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_DIRECT: True,
        os.O_WRONLY: False,
        os.O_RDWR: False,
        os.O_ACCMODE: False,
        os.O_RDONLY | os.O_TRUNC: False,
    }
    for _, ino in [*rig.bs.walk(), ("", 0), ("", rig.bs.inode_count + 1)]:
        real = 0 < ino <= rig.bs.inode_count
        is_dir = real and rig.bs.inode(ino).is_dir
        for flags, ok in modes.items():
            r = Req(wire.request(Opcode.OPEN, abi.OPEN_IN.pack(flags, 0), nodeid=ino))
            (served if ok and real and not is_dir else left).append(r)
        served.append(Req(wire.request(Opcode.FLUSH, abi.FLUSH_IN.pack(7, 0, 0, 9), nodeid=ino)))
        served.append(
            Req(wire.request(Opcode.RELEASE, abi.RELEASE_IN.pack(7, 0, 0, 0), nodeid=ino))
        )
    check_identical(rig.run(served))
    check_falls_back(rig, left)
    short = [
        Req(wire.request(Opcode.OPEN, b"\0" * 7, nodeid=1)),
        Req(wire.request(Opcode.FLUSH, b"\0" * 23, nodeid=1)),
        Req(wire.request(Opcode.RELEASE, b"\0" * 23, nodeid=1)),
        Req(wire.request(Opcode.OPEN, abi.OPEN_IN.pack(0, 0), nodeid=2), write=31),
    ]
    check_falls_back(rig, short)
