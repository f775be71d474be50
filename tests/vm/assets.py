"""Guest-side and reference assets: the reference virtiofsd (Debian 13's, run on Debian 12).

Each asset is built once and cached (cache.py); later calls only look at the cache.
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
import tarfile
from pathlib import Path, PurePosixPath

from tests.vm.apt import PrivateApt, extract
from tests.vm.cache import cache_dir, cached

# Debian 13 ships virtiofsd 1.13; its binary needs trixie's glibc, so it runs through
# trixie's own loader with trixie's libraries.
_VIRTIOFSD_SUITE = "trixie"
_VIRTIOFSD_PACKAGES = ["virtiofsd", "libc6", "libseccomp2", "libcap-ng0", "libgcc-s1"]
_LIBDIR = "usr/lib/x86_64-linux-gnu"
_LOADER = "usr/lib64/ld-linux-x86-64.so.2"


def _find_cached(prefix: str) -> Path | None:
    """The newest complete cache entry named PREFIX-<version>, if any (no network needed)."""
    found = sorted(p for p in cache_dir().glob(f"{prefix}-*") if p.is_dir())
    return found[-1] if found else None


def virtiofsd_root() -> Path:
    """The directory holding trixie's virtiofsd with its loader and libraries."""
    hit = _find_cached("virtiofsd")
    if hit is not None:
        return hit
    apt = PrivateApt(_VIRTIOFSD_SUITE)
    version = apt.version("virtiofsd")

    def build(tmp: Path) -> None:
        debs = apt.download(_VIRTIOFSD_PACKAGES, tmp / "debs")
        for deb in debs:
            extract(deb, tmp / "root")
        shutil.rmtree(tmp / "debs")
        for rel in (_LOADER, "usr/libexec/virtiofsd", _LIBDIR + "/libc.so.6"):
            if not (tmp / "root" / rel).exists():
                raise RuntimeError(f"virtiofsd {version}: {rel} missing from the packages")
        (tmp / "VERSION").write_text(version + "\n")

    return cached(f"virtiofsd-{version}", build)


def virtiofsd_cmd() -> list[str]:
    """argv prefix running the reference virtiofsd; append its own options."""
    root = virtiofsd_root() / "root"
    return [
        str(root / _LOADER),
        "--library-path",
        str(root / _LIBDIR),
        str(root / "usr/libexec/virtiofsd"),
    ]


def virtiofsd_version() -> str:
    return (virtiofsd_root() / "VERSION").read_text().strip()


# ---- guest kernel and busybox (Debian 12) -------------------------------------------------

_GUEST_SUITE = "bookworm"
# insmod order: each needs the ones before it
GUEST_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "fuse",
    "virtiofs",
)


def guest_kernel() -> Path:
    """Directory with vmlinuz, modules/<name>.ko (uncompressed) and VERSION (uname -r).

    Also vmlinux (the uncompressed ELF) when the kernel has a PVH entry point: QEMU boots
    that directly, skipping the decompressor, which takes seconds under TCG.
    """
    hit = _find_cached("kernel")
    if hit is not None:
        return hit
    apt = PrivateApt(_GUEST_SUITE)
    image = next(d for d in apt.depends("linux-image-amd64") if d.startswith("linux-image-"))
    version = apt.version(image)

    def build(tmp: Path) -> None:
        (deb,) = apt.download([image], tmp / "debs")
        _extract_kernel(deb, tmp)
        vmlinux = _vmlinux(tmp / "vmlinuz")
        if vmlinux is not None and _has_pvh_entry(vmlinux):
            (tmp / "vmlinux").write_bytes(vmlinux)
        shutil.rmtree(tmp / "debs")
        (tmp / "VERSION").write_text(image.removeprefix("linux-image-") + "\n")
        (tmp / "PACKAGE").write_text(f"{image} {version}\n")

    return cached(f"kernel-{image.removeprefix('linux-image-')}-{version}", build)


def _extract_kernel(deb: Path, into: Path) -> None:
    """Pull vmlinuz and the virtio-fs module chain out of a linux-image .deb."""
    wanted = {f"{m}.ko": m for m in GUEST_MODULES}
    (into / "modules").mkdir()
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            for member in tar:
                base = PurePosixPath(member.name).name
                if not member.isfile():
                    continue
                if base.startswith("vmlinuz-"):
                    dest = into / "vmlinuz"
                elif base.removesuffix(".xz").removesuffix(".zst") in wanted:
                    dest = into / "modules" / base
                else:
                    continue
                src = tar.extractfile(member)
                assert src is not None
                data = src.read()
                if base.endswith(".xz"):
                    data, dest = lzma.decompress(data), dest.with_suffix("")
                dest.write_bytes(data)
    if p.returncode != 0:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb.name} failed ({p.returncode})")
    if not (into / "vmlinuz").exists():
        raise RuntimeError(f"{deb.name}: no vmlinuz")
    # a module missing from the package is built into the kernel: /init skips it
    if not (into / "modules" / "virtiofs.ko").exists():
        raise RuntimeError(f"{deb.name}: no virtiofs module")


def _vmlinux(bzimage: Path) -> bytes | None:
    """The ELF kernel inside an xz-compressed bzImage (what scripts/extract-vmlinux does)."""
    data = bzimage.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        return None
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
    except lzma.LZMAError:
        return None
    return elf if elf.startswith(b"\x7fELF\x02\x01") else None


def _has_pvh_entry(elf: bytes) -> bool:
    """Does this ELF64 carry the Xen PHYS32_ENTRY note (18) that QEMU's PVH boot needs?"""
    phoff, phentsize, phnum = (
        int.from_bytes(elf[0x20:0x28], "little"),
        int.from_bytes(elf[0x36:0x38], "little"),
        int.from_bytes(elf[0x38:0x3A], "little"),
    )
    for i in range(phnum):
        ph = elf[phoff + i * phentsize : phoff + (i + 1) * phentsize]
        if int.from_bytes(ph[0:4], "little") != 4:  # PT_NOTE
            continue
        off, size = int.from_bytes(ph[8:16], "little"), int.from_bytes(ph[32:40], "little")
        pos, end = off, off + size
        while pos + 12 <= end:
            namesz, descsz, ntype = (
                int.from_bytes(elf[pos + k : pos + k + 4], "little") for k in (0, 4, 8)
            )
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def busybox_static() -> Path:
    """Debian 12's statically linked busybox (runs as the guest's initramfs userland)."""
    hit = _find_cached("busybox")
    if hit is not None:
        return hit / "busybox"
    apt = PrivateApt(_GUEST_SUITE)
    version = apt.version("busybox-static")

    def build(tmp: Path) -> None:
        (deb,) = apt.download(["busybox-static"], tmp / "debs")
        extract(deb, tmp / "root")
        (tmp / "root" / "bin" / "busybox").rename(tmp / "busybox")
        shutil.rmtree(tmp / "debs")
        shutil.rmtree(tmp / "root")

    return cached(f"busybox-{version.replace(':', '_')}", build) / "busybox"
