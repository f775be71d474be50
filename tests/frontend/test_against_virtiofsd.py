"""The test driver against the reference virtiofsd: no guest, just the vhost-user socket."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from tests.frontend import fuse_abi as fa
from tests.frontend.client import FuseClient
from tests.frontend.conftest import FrontendFactory
from tests.frontend.vring import Buf


def test_init_negotiates_7_38(frontend_on: FrontendFactory) -> None:
    fe, _ = frontend_on()
    fs = FuseClient(fe)
    flags2 = fa.HAS_EXPIRE_ONLY >> 32  # INIT_EXT: the upper flags travel in flags2
    init = fs.init(flags2=flags2)
    assert (init.major, init.minor) == (7, 38)
    assert init.max_write > 0 and init.max_pages > 0
    assert init.flags & ~fa.KERNEL_INIT_FLAGS == 0  # never more than the kernel offered
    assert init.flags2 & ~flags2 == 0


def test_lookup_and_getattr_match_lstat(fs: FuseClient, tree: Path) -> None:
    st = os.lstat(tree / "hello.txt")
    entry = fs.lookup(fa.ROOT_ID, b"hello.txt")
    again = fs.getattr(entry.nodeid).attr
    for a in (entry.attr, again):
        assert (a.ino, a.size, a.mode, a.nlink) == (st.st_ino, st.st_size, st.st_mode, st.st_nlink)
        assert (a.mtime, a.mtimensec) == (int(st.st_mtime), st.st_mtime_ns % 10**9)


def test_open_read_release_returns_the_file(fs: FuseClient, tree: Path) -> None:
    want = (tree / "hello.txt").read_bytes()
    node = fs.lookup(fa.ROOT_ID, b"hello.txt").nodeid
    fh = fs.open(node).fh
    got = b"".join(fs.read(node, fh, off, 1000) for off in range(0, len(want) + 1000, 1000))
    assert got == want
    assert fs.read(node, fh, len(want), 4096) == b""  # EOF is an empty reply
    fs.flush_fh(node, fh)
    fs.release(node, fh)


def test_readdirplus_matches_scandir(fs: FuseClient, tree: Path) -> None:
    node = fs.lookup(fa.ROOT_ID, b"dir").nodeid
    entries = {d.name: d for d in fs.listdir(node, plus=True, size=1024)}  # several pages
    assert set(entries) == {os.fsencode(e.name) for e in os.scandir(tree / "dir")} | {
        b".",
        b"..",
    }
    for e in os.scandir(tree / "dir"):
        st = e.stat(follow_symlinks=False)
        d = entries[os.fsencode(e.name)]
        assert d.ino == st.st_ino
        assert d.type == stat.S_IFMT(st.st_mode) >> 12
        assert d.entry is not None and d.entry.nodeid != 0
        assert (d.entry.attr.mode, d.entry.attr.size) == (st.st_mode, st.st_size)


def test_readdir_and_readlink(fs: FuseClient, tree: Path) -> None:
    node = fs.lookup(fa.ROOT_ID, b"dir").nodeid
    names = {d.name for d in fs.listdir(node, plus=False)}
    assert b"link" in names and b"sub" in names
    link = fs.lookup(node, b"link")
    assert fs.readlink(link.nodeid) == b"file-001"


def test_statfs_matches_statvfs(fs: FuseClient, tree: Path) -> None:
    sv = os.statvfs(tree)
    got = fs.statfs()
    assert (got.bsize, got.namelen, got.blocks) == (sv.f_bsize, sv.f_namemax, sv.f_blocks)


def test_error_replies_carry_errno(fs: FuseClient) -> None:
    with pytest.raises(OSError) as e:
        fs.lookup(fa.ROOT_ID, b"no-such-file")
    assert e.value.errno == errno.ENOENT
    for mutate in (
        lambda: fs.mkdir(fa.ROOT_ID, b"newdir"),
        lambda: fs.unlink(fa.ROOT_ID, b"hello.txt"),
        lambda: fs.create(fa.ROOT_ID, b"newfile"),
    ):
        with pytest.raises(OSError) as e:
            mutate()
        assert e.value.errno == errno.EROFS


def test_xattr_access_lseek_and_more_erofs(frontend_on: FrontendFactory, tree: Path) -> None:
    fe, _ = frontend_on(extra_args=("--xattr",))
    fs = FuseClient(fe)
    fs.init()
    path = tree / "hello.txt"
    node = fs.lookup(fa.ROOT_ID, b"hello.txt").nodeid
    host_names = sorted(os.fsencode(n) for n in os.listxattr(path))
    assert sorted(fs.listxattr(node)) == host_names
    assert fs.listxattr_size(node) == sum(len(n) + 1 for n in host_names)
    for name in host_names:
        value = os.getxattr(path, name)
        assert fs.getxattr_size(node, name) == len(value)
        assert fs.getxattr(node, name) == value
    with pytest.raises(OSError) as e:
        fs.getxattr(node, b"user.absent", 64)
    assert e.value.errno == errno.ENODATA
    fs.access(node, os.R_OK)
    fh = fs.open(node).fh
    size = path.stat().st_size
    assert fs.lseek(node, fh, 0, os.SEEK_DATA) == 0
    assert fs.lseek(node, fh, 0, os.SEEK_HOLE) == size
    assert fs.getattr(node, fh).attr.size == size
    for mutate in (
        lambda: fs.access(node, os.W_OK),
        lambda: fs.open(node, os.O_WRONLY),
        lambda: fs.setattr(node, size=0),
        lambda: fs.write(node, fh, 0, b"zz"),
    ):
        with pytest.raises(OSError) as e:
            mutate()
        assert e.value.errno == errno.EROFS


def test_256_reads_in_flight(fs: FuseClient, tree: Path) -> None:
    want = (tree / "big.bin").read_bytes()
    node = fs.lookup(fa.ROOT_ID, b"big.bin").nodeid
    fh = fs.open(node).fh
    offsets = [(i * 12289) % (len(want) - 4096) for i in range(256)]
    uniques = [fs.submit(fa.Op.READ, node, fa.read_in(fh, o, 4096), 4096) for o in offsets]
    replies = fs.wait(uniques)  # one publish, one kick for all 256
    assert [bytes(r.payload()) for r in replies] == [want[o : o + 4096] for o in offsets]


def test_forget_on_hiprio_and_clean_stop(fs: FuseClient) -> None:
    node = fs.lookup(fa.ROOT_ID, b"hello.txt").nodeid
    fs.getattr(node)
    fs.forget(node, 1)
    fs.batch_forget([(node, 0)])
    bases = fs.fe.stop()
    # GET_VRING_BASE answers the next avail index the device would have read.
    assert bases == {0: 2, 1: fs.fe.queues[1].ring.avail_idx} and bases[1] == 3


def test_ring_restart_resumes_at_base(fs: FuseClient) -> None:
    fs.getattr(fa.ROOT_ID)
    base = fs.fe.stop_queue(1)
    assert base == fs.fe.queues[1].ring.avail_idx
    fs.fe.restart_queue(1, base)
    assert fs.lookup(fa.ROOT_ID, b"hello.txt").attr.size > 0
    assert fs.fe.stop_queue(1) == base + 1


def test_replaced_call_fd_gets_the_notifications(fs: FuseClient) -> None:
    fs.fe.replace_call(1)
    q = fs.fe.queues[1]
    u = fs.submit(fa.Op.GETATTR, fa.ROOT_ID, fa.getattr_in(), 104)
    q.ring.arm(1)
    fs.flush()
    assert q.wait_call(5.0)  # signalled on the new eventfd
    assert fs.wait([u])[0].payload()


@pytest.mark.parametrize(
    "opts,client_opts",
    [
        ({"event_idx": False}, {}),
        ({"indirect": True}, {"indirect": True}),
        ({"queue_size": 256}, {"max_seg": 36}),  # headers split across descriptors
        ({"add_mem_reg": True}, {}),
    ],
    ids=["no-event-idx", "indirect", "segmented", "add-mem-reg"],
)
def test_transport_variants_read_correctly(
    frontend_on: FrontendFactory,
    tree: Path,
    opts: dict[str, object],
    client_opts: dict[str, int],
) -> None:
    fe, _ = frontend_on(**opts)
    fs = FuseClient(fe, **client_opts)  # type: ignore[arg-type]
    fs.init()
    want = (tree / "big.bin").read_bytes()[:4000]
    node = fs.lookup(fa.ROOT_ID, b"big.bin").nodeid
    fh = fs.open(node).fh
    reads = [fa.read_in(fh, off, 500) for off in range(0, 4000, 500)]
    uniques = [fs.submit(fa.Op.READ, node, r, 500) for r in reads]
    assert b"".join(bytes(r.payload()) for r in fs.wait(uniques)) == want


def test_hot_added_region_carries_requests(frontend_on: FrontendFactory, tree: Path) -> None:
    fe, _ = frontend_on()
    fs = FuseClient(fe)
    fs.init()
    region = fe.add_region(1 << 20)
    # A GETATTR whose both buffers live in the new region.
    req = fa.request(fa.Op.GETATTR, 99, fa.ROOT_ID, fa.getattr_in())
    in_gpa, out_gpa = region.gpa, region.gpa + 4096
    fe.mem.write(in_gpa, req)
    ring = fe.queues[1].ring
    head = ring.add_chain([Buf(in_gpa, len(req)), Buf(out_gpa, 16 + 104, True)])
    fe.queues[1].submit([head])
    assert fe.queues[1].wait_used(1, 5.0)
    [(used_id, length)] = ring.pop_used()
    ring.free_chain(head)
    assert used_id == head and length == 120
    attr = fa.attr_out(fa.check_reply(fe.mem.read(out_gpa, length), 99, fa.Op.GETATTR))
    assert attr.attr.ino == os.lstat(tree).st_ino
    fe.remove_region(region)
    assert fs.getattr(fa.ROOT_ID).attr.ino == attr.attr.ino
