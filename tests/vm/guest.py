"""Boot a QEMU guest that mounts a vhost-user-fs back-end's share and runs one script.

    result = run_guest(socket_path, "ls -la; sha256sum big")
    result.status, result.output        # the script's exit status and stdout+stderr

The guest is a Debian 12 kernel with a busybox initramfs (initramfs.py); with rootfs=True
the share is the guest's root file system (e.g. debian_rootfs() served by a back-end) and
the script runs with its userland. In the script, $VNYDUS_SHARE is where the share is
mounted (the working directory) and $VNYDUS_FILES holds the `files` passed to run_guest.

More back-ends (e.g. Kata's layout: an image plus a shared directory) attach through
extra_qemu_args, and the script mounts them itself (the virtio-fs modules are loaded):
    extra_qemu_args=["-chardev", f"socket,id=c1,path={sock2}",
                     "-device", "vhost-user-fs-pci,queue-size=1024,chardev=c1,tag=two"]
    script="mkdir -p /two && mount -t virtiofs two /two && ls /two"
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.vm.accel import accel_args
from tests.vm.assets import guest_kernel
from tests.vm.initramfs import write_run_initramfs
from tests.vm.process import short_tmpdir

_EXIT = "VNYDUS-EXIT="
_BEGIN = "VNYDUS-BEGIN"
_SETUP_FAILED = "VNYDUS-SETUP-FAILED:"
_CONSOLE_TAIL = 40
# after the exit marker the guest only powers off; if QEMU lingers, stop it ourselves
_POWEROFF_GRACE = 10.0


class GuestRunError(RuntimeError):
    """The guest did not run the script to completion; the message ends with its console."""

    def __init__(self, what: str, console: str, qemu_log: str = "") -> None:
        tail = "\n".join(console.splitlines()[-_CONSOLE_TAIL:])
        parts = [what, f"--- guest console (last {_CONSOLE_TAIL} lines) ---", tail]
        if qemu_log.strip():
            parts += ["--- qemu ---", qemu_log.strip()]
        super().__init__("\n".join(parts))
        self.console = console


class GuestTimeout(GuestRunError):
    """The guest was still running at the timeout and was killed."""


class GuestSetupFailed(GuestRunError):
    """The guest's /init failed before the script ran (module, mount, switch_root)."""


@dataclass(frozen=True)
class GuestResult:
    status: int  # the script's exit status
    output: str  # the script's stdout+stderr, exactly (no kernel messages, no CRs)
    console: str  # the whole serial console (kernel log included)
    boot_seconds: float  # QEMU start -> script start (share mounted)
    script_seconds: float  # script start -> script end
    total_seconds: float  # QEMU start -> QEMU exit


def run_guest(
    socket_path: Path | str | None,
    script: str,
    *,
    timeout: float = 120,
    tag: str = "vnydus",
    memory_mb: int = 512,
    rootfs: bool = False,
    files: Mapping[str, bytes] | None = None,
    extra_qemu_args: Sequence[str] = (),
    accel: str | None = None,
) -> GuestResult:
    """Boot a guest on the back-end at SOCKET_PATH (None: no virtio-fs device), run SCRIPT.

    Raises GuestTimeout (killed at TIMEOUT seconds), GuestSetupFailed, or GuestRunError
    (QEMU or the kernel died without the script's exit marker), each carrying the console.
    """
    kernel = guest_kernel()
    work = short_tmpdir("vnguest-")
    try:
        initrd = write_run_initramfs(work / "initrd", script, files or {})
        console, output, qlog = work / "console", work / "output", work / "qemu.log"
        # the uncompressed kernel boots seconds faster under TCG (no decompressor)
        image = kernel / "vmlinux" if (kernel / "vmlinux").exists() else kernel / "vmlinuz"
        # cryptomgr.notests: the crypto self-tests cost 1-3 s of emulated CPU per boot
        append = ["console=ttyS0", "panic=-1", "oops=panic", "mitigations=off", "cryptomgr.notests"]
        if socket_path is not None:
            append.append(f"vnydus.tag={tag}")
            if rootfs:
                append.append("vnydus.root=1")
        argv = [
            "qemu-system-x86_64",
            "-nodefaults",
            "-no-user-config",
            "-display", "none",
            "-no-reboot",
            *accel_args(accel),
            "-m", f"{memory_mb}M",
            "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
            "-numa", "node,memdev=mem",
            "-kernel", str(image),
            "-initrd", str(initrd),
            "-append", " ".join(append),
            "-serial", f"file:{console}",
            "-serial", f"file:{output}",
        ]  # fmt: skip
        if socket_path is not None:
            argv += [
                "-chardev", f"socket,id=char0,path={socket_path}",
                "-device", f"vhost-user-fs-pci,queue-size=1024,chardev=char0,tag={tag}",
            ]  # fmt: skip
        argv += extra_qemu_args
        return _boot(argv, console, output, qlog, timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _boot(argv: list[str], console: Path, output: Path, qlog: Path, timeout: float) -> GuestResult:
    start = time.monotonic()
    begin_at = exit_at = None
    with open(qlog, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if begin_at is None or exit_at is None:
                text = _read(console)
                if begin_at is None and _BEGIN in text:
                    begin_at = now
                if exit_at is None and _EXIT in text:
                    exit_at = now
            if exit_at is not None and now - exit_at > _POWEROFF_GRACE:
                proc.kill()
                proc.wait()
                break
            if now - start > timeout:
                proc.kill()
                proc.wait()
                raise GuestTimeout(
                    f"guest still running after {timeout:g}s: killed", _read(console), _read(qlog)
                )
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    end = time.monotonic()
    text, out = _read(console), _read(output)
    if _SETUP_FAILED in text:
        why = text[text.index(_SETUP_FAILED) :].splitlines()[0]
        raise GuestSetupFailed(f"guest set-up failed: {why}", text, _read(qlog))
    status = _exit_status(out)
    if status is None:
        raise GuestRunError(
            f"QEMU exited ({proc.returncode}) without the script's exit status", text, _read(qlog)
        )
    out = out[: out.rfind(_EXIT)]
    begin_at = begin_at or end
    return GuestResult(
        status=status,
        output=out,
        console=text,
        boot_seconds=begin_at - start,
        script_seconds=(exit_at or end) - begin_at,
        total_seconds=end - start,
    )


def _exit_status(output: str) -> int | None:
    idx = output.rfind(_EXIT)
    if idx < 0:
        return None
    value = output[idx + len(_EXIT) :].strip()
    return int(value) if value.isdigit() else None


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace").replace("\r", "")
    except FileNotFoundError:
        return ""


__all__ = ["GuestResult", "GuestRunError", "GuestSetupFailed", "GuestTimeout", "run_guest"]
