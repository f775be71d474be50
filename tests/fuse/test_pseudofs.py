"""Several file systems at sub-paths of one export: Kata's /containers + /rafs/<cid>/lowerdir."""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtiofsd_nydus.errors import LocalError
from virtiofsd_nydus.fuse import abi
from virtiofsd_nydus.fuse.abi import Opcode
from virtiofsd_nydus.fuse.imagefs import ImageFS
from virtiofsd_nydus.fuse.passthroughfs import PassthroughFS
from virtiofsd_nydus.fuse.pseudofs import INNER_MASK, SLOT_SHIFT, PseudoFS
from virtiofsd_nydus.fuse.server import Server

from .images import Built, File, Link, build
from .session import Session
from .wire import (
    BIG,
    ENTRY_NODEID,
    KERNEL_FLAGS,
    attr_of_entry,
    cstr,
    dirents,
    entry_out,
    init_body,
    parse,
    read_in,
    request,
)


@pytest.fixture
def image(tmp_path: Path) -> Built:
    img = tmp_path / "img"
    img.mkdir()
    return build({b"etc": {b"os-release": File(b"ID=test\n")}, b"bin": Link(b"usr/bin")}, img)


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    d = tmp_path / "shared"
    d.mkdir()
    return d


@pytest.fixture
def pfs(image: Built, shared: Path) -> Iterator[PseudoFS]:
    fs = PseudoFS()
    pt = PassthroughFS(shared)
    fs.mount("/containers", pt)
    fs.mount("/rafs/c1/lowerdir", ImageFS(image.bootstrap, image.source))
    yield fs
    pt.close()


def names(s: Session, ino: int) -> list[bytes]:
    r = s.call(Opcode.READDIR, read_in(0, 0, 4096), nodeid=ino)
    assert r.error == 0, r.error
    return [d.name for d in dirents(r.payload)]


def test_tree_of_pseudo_dirs_and_mounts(pfs: PseudoFS) -> None:
    s = Session(pfs)
    assert names(s, 1) == [b".", b"..", b"containers", b"rafs"]
    rafs = s.lookup(b"rafs")
    assert rafs >> SLOT_SHIFT == 0
    assert stat.S_ISDIR(s.getattr(rafs)["mode"])
    lower = s.lookup(b"rafs/c1/lowerdir")
    assert lower >> SLOT_SHIFT != 0 and lower & 0xFF == 1
    assert names(s, lower) == [b".", b"..", b"bin", b"etc"]
    f = s.lookup(b"rafs/c1/lowerdir/etc/os-release")
    assert f >> SLOT_SHIFT == lower >> SLOT_SHIFT
    a = s.getattr(f)
    assert a["ino"] == f and a["size"] == 8
    assert s.read(f, 0, 100, s.open(f)).payload == b"ID=test\n"
    assert s.call(Opcode.READLINK, nodeid=s.lookup(b"rafs/c1/lowerdir/bin")).payload == b"usr/bin"
    assert pfs.mounts().keys() == {"/containers", "/rafs/c1/lowerdir"}


def test_mount_roots_are_announced_as_submounts(pfs: PseudoFS) -> None:
    srv = Server(pfs)
    r = parse(srv.handle(request(Opcode.INIT, init_body(38, KERNEL_FLAGS)), BIG))
    assert abi.INIT_OUT.unpack(r.payload)[3] & abi.SUBMOUNTS
    c = entry_out(parse(srv.handle(request(Opcode.LOOKUP, cstr(b"containers")), BIG)).payload)
    assert attr_of_entry(c)["flags"] & abi.ATTR_SUBMOUNT
    r = parse(srv.handle(request(Opcode.LOOKUP, cstr(b"rafs")), BIG))
    assert not attr_of_entry(entry_out(r.payload))["flags"] & abi.ATTR_SUBMOUNT


def test_writes_go_to_the_passthrough_only(pfs: PseudoFS, shared: Path) -> None:
    s = Session(pfs)
    c = s.lookup(b"containers")
    body = abi.MKDIR_IN.pack(0o755, 0) + cstr(b"c1")
    r = s.call(Opcode.MKDIR, body, nodeid=c)
    assert r.error == 0 and (shared / "c1").is_dir()
    assert entry_out(r.payload)[ENTRY_NODEID] >> SLOT_SHIFT == c >> SLOT_SHIFT
    assert s.call(Opcode.MKDIR, body, nodeid=1).error == errno.EROFS  # a pseudo dir
    assert s.call(Opcode.MKDIR, body, nodeid=s.lookup(b"rafs/c1/lowerdir")).error == errno.EROFS
    # no renames or links across mounts
    lower = s.lookup(b"rafs/c1/lowerdir")
    etc = s.lookup(b"rafs/c1/lowerdir/etc")
    assert (
        s.call(Opcode.RENAME, abi.RENAME_IN.pack(c) + cstr(b"etc", b"x"), nodeid=lower).error
        == errno.EXDEV
    )
    assert s.call(Opcode.LINK, abi.LINK_IN.pack(etc) + cstr(b"x"), nodeid=c).error == errno.EXDEV
    assert s.call(Opcode.UNLINK, cstr(b"rafs")).error == errno.EROFS


def test_umount_makes_old_ids_stale_and_slots_are_not_reused_soon(
    pfs: PseudoFS, image: Built
) -> None:
    s = Session(pfs)
    f = s.lookup(b"rafs/c1/lowerdir/etc/os-release")
    old = pfs.umount("/rafs/c1/lowerdir")
    assert isinstance(old, ImageFS)
    assert s.call(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0), nodeid=f).error == errno.ESTALE
    c1 = s.lookup(b"rafs/c1")
    assert s.call(Opcode.LOOKUP, cstr(b"lowerdir"), nodeid=c1).error == errno.ENOENT
    pfs.mount("/rafs/c1/lowerdir", ImageFS(image.bootstrap, image.source))
    again = s.lookup(b"rafs/c1/lowerdir/etc/os-release")
    assert again >> SLOT_SHIFT != f >> SLOT_SHIFT
    assert s.call(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0), nodeid=f).error == errno.ESTALE
    # forgetting ids of a vanished mount is harmless
    assert s.srv.handle(request(Opcode.FORGET, abi.FORGET_IN.pack(1), nodeid=f), 0) is None


def test_mount_table_errors(pfs: PseudoFS, image: Built) -> None:
    img = ImageFS(image.bootstrap, image.source)
    for bad in ("relative", "/", "/a/../b", "/containers", "/containers/inside", "/rafs/c1"):
        with pytest.raises(LocalError):
            pfs.mount(bad, img)
    with pytest.raises(LocalError):
        pfs.umount("/not/mounted")


def test_init_and_destroy_reach_every_mount(pfs: PseudoFS, image: Built) -> None:
    s = Session(pfs)
    f = s.lookup(b"rafs/c1/lowerdir/etc")
    lower = pfs.mounts()["/rafs/c1/lowerdir"]
    assert isinstance(lower, ImageFS) and lower.lookups == {f & INNER_MASK: 1}
    late = ImageFS(image.bootstrap, image.source)
    pfs.mount("/rafs/c2/lowerdir", late)  # mounted mid-session: initialised on the spot
    s.lookup(b"rafs/c2/lowerdir/etc")
    assert late.lookups
    Session(pfs)  # a new INIT
    assert lower.lookups == {} and late.lookups == {}


def test_readdirplus_through_pseudo_and_mounted_dirs(pfs: PseudoFS) -> None:
    s = Session(pfs)
    r = s.call(Opcode.READDIRPLUS, read_in(0, 0, 8192), nodeid=1)
    got = {d.name: d for d in dirents(r.payload, plus=True)}
    assert got[b"containers"].entry is not None
    assert got[b"containers"].entry[ENTRY_NODEID] == s.lookup(b"containers")
    lower = s.lookup(b"rafs/c1/lowerdir")
    r = s.call(Opcode.READDIRPLUS, read_in(0, 0, 8192), nodeid=lower)
    got = {d.name: d for d in dirents(r.payload, plus=True)}
    etc = got[b"etc"]
    assert etc.entry is not None and etc.entry[ENTRY_NODEID] == etc.ino == s.lookup(
        b"rafs/c1/lowerdir/etc"
    )
