"""Pick QEMU's accelerator: KVM only when it provably boots a guest here, else TCG.

Nested KVM on some hosts opens /dev/kvm fine and then hangs the guest, so /dev/kvm existing
proves nothing: one probe boot decides, and its verdict is cached per host kernel and QEMU.
$VNYDUS_ACCEL=tcg|kvm overrides the probe.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess

from tests.vm.cache import cache_dir, locked

_PROBE_TIMEOUT = 25.0
_ARGS = {
    # "pc" boots faster than "q35" under TCG (fewer devices to set up)
    "tcg": ["-accel", "tcg", "-machine", "pc"],
    "kvm": ["-accel", "kvm", "-machine", "pc", "-cpu", "host"],
}


def accel_args(accel: str | None = None) -> list[str]:
    """QEMU arguments for ACCEL ("tcg" / "kvm"), or for the probed best choice when None."""
    return list(_ARGS[accel or chosen_accel()])


def chosen_accel() -> str:
    forced = os.environ.get("VNYDUS_ACCEL")
    if forced:
        if forced not in _ARGS:
            raise ValueError(f"VNYDUS_ACCEL={forced!r}: expected one of {sorted(_ARGS)}")
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    key = f"{platform.release()} {_qemu_version()}"
    path = cache_dir() / "accel-probe.json"
    with locked("accel-probe"):
        try:
            verdict = json.loads(path.read_text())
            if verdict.get("key") == key:
                return str(verdict["accel"])
        except (OSError, ValueError, KeyError):
            pass
        accel = "kvm" if _kvm_boots() else "tcg"
        path.write_text(json.dumps({"key": key, "accel": accel}) + "\n")
        return accel


def _kvm_boots() -> bool:
    from tests.vm.guest import GuestRunError, run_guest  # guest imports us

    try:
        return run_guest(None, "echo ok", accel="kvm", timeout=_PROBE_TIMEOUT).output == "ok\n"
    except GuestRunError:
        return False


def _qemu_version() -> str:
    r = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    return r.stdout.splitlines()[0] if r.stdout else "unknown"
