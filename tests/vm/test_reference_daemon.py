"""The reference virtiofsd runs on this machine and announces its socket (no guest needed)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.vm.assets import virtiofsd_cmd, virtiofsd_version
from tests.vm.reference import ReferenceFactory


def test_virtiofsd_cmd_is_cached_and_runs(
    reference_virtiofsd: ReferenceFactory, tmp_path: Path
) -> None:
    assert virtiofsd_version().startswith("1.13")
    assert virtiofsd_cmd() == virtiofsd_cmd()
    daemon = reference_virtiofsd(tmp_path)
    assert daemon.proc.poll() is None
    # it listens: a front-end can connect
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(daemon.socket_path))
