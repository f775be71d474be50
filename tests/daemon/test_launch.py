"""How the daemon is launched and stopped: Kata's command lines, CLI errors, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.daemon import rig
from tests.daemon.conftest import DaemonFactory
from tests.frontend import fuse_abi as fa
from tests.frontend.client import FuseClient
from tests.frontend.frontend import Frontend
from tests.vm.process import stop


def _read_and_write(sock: str, share: Path) -> None:
    fe = Frontend(sock, timeout=5.0).start()
    try:
        fs = FuseClient(fe)
        fs.init()
        node = fs.lookup(fa.ROOT_ID, b"keep").nodeid
        fh = fs.open(node).fh
        assert fs.read(node, fh, 0, 100) == b"keep me\n"
        entry, opened = fs.create(fa.ROOT_ID, b"written", os.O_WRONLY | os.O_CREAT)
        assert fs.write(entry.nodeid, opened.fh, 0, b"from the guest\n") == 15
        fs.release(entry.nodeid, opened.fh)
        fe.stop()
    finally:
        fe.close()
    assert (share / "written").read_bytes() == b"from the guest\n"


@pytest.fixture
def share(tmp_path: Path) -> Path:
    d = tmp_path / "share"
    d.mkdir()
    (d / "keep").write_bytes(b"keep me\n")
    return d


def test_kata_go_runtime_command_line(share: Path, sock_dir: Path, tmp_path: Path) -> None:
    """Kata's Go runtime: it listens itself and passes the socket as fd 3."""
    path = sock_dir / "kata-go.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    log = tmp_path / "go.log"
    argv = [*rig.DAEMON_ARGV, "--syslog", "--cache=auto", f"--shared-dir={share}", "--fd=3"]
    argv += ["--thread-pool-size=1", "-o", "announce_submounts"]
    lfd = listener.fileno()
    # The shell puts the listening socket at fd 3, as the Go runtime's ExtraFiles does.
    wrapped = ["bash", "-c", f'exec "$0" "$@" 3<&{lfd} {lfd}<&-', *argv]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            wrapped,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            pass_fds=[lfd],
            start_new_session=True,
        )
    listener.close()
    try:
        _read_and_write(str(path), share)
        assert proc.wait(10) == 0, log.read_text()
    finally:
        stop(proc)


def test_kata_rust_runtime_command_line(start_daemon: DaemonFactory, share: Path) -> None:
    d = start_daemon(
        "--shared-dir",
        str(share),
        "--cache",
        "auto",
        "--sandbox",
        "none",
        "--seccomp",
        "none",
        "--inode-file-handles",
        "never",
        serve_image=False,
    )
    _read_and_write(str(d.socket_path), share)
    assert d.proc.wait(10) == 0, d.log()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*rig.DAEMON_ARGV, *args], capture_output=True, text=True, timeout=60, check=False
    )


def _one_clear_line(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr
    assert len(lines) == 1 or lines[-1].startswith("virtiofsd-nydus: error"), res.stderr
    for w in words:
        assert w in res.stderr, res.stderr


def test_cli_errors_are_one_clear_line(sock_dir: Path, image: Path, tmp_path: Path) -> None:
    sock = str(sock_dir / "cli.sock")
    _one_clear_line(_cli("--socket-path", sock), "exactly one of")
    _one_clear_line(_cli("--image", str(image)), "--socket-path")
    _one_clear_line(_cli("--socket-path", sock, "--image", str(tmp_path / "nope")), "nope")
    _one_clear_line(_cli("--socket-path", sock, "--shared-dir", str(tmp_path / "nope")), "nope")
    _one_clear_line(_cli("--bogus-flag"), "--bogus-flag")
    _one_clear_line(_cli("--socket-path", sock, "--image", str(image), "-o", "frob"), "frob")
    _one_clear_line(_cli("--fd", "1", "--image", str(image)), "--fd 1")
    assert not os.path.exists(sock)


@pytest.mark.parametrize("damage", ["truncate", "flip-header", "empty"])
def test_corrupt_bootstrap_is_one_clear_line(image: Path, tmp_path: Path, damage: str) -> None:
    """--bootstrap with no digest to check: the reader's own checks refuse it (an --image's
    image.boot is refused by its digest first: test_verify.py)."""
    data = bytearray((image / "image.boot").read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip-header":
        data[9] ^= 0xFF
    else:
        data = bytearray()
    bad = tmp_path / "bad.boot"
    bad.write_bytes(bytes(data))
    blobs = str(image / "blobs" / "sha256")
    res = _cli("--socket-path", str(tmp_path / "s"), "--bootstrap", str(bad), "--blob-dir", blobs)
    _one_clear_line(res, "bootstrap")
    assert not (tmp_path / "s").exists()  # refused before listening


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("connected", [False, True], ids=["idle", "connected"])
def test_signals_stop_cleanly(start_daemon: DaemonFactory, sig: int, connected: bool) -> None:
    """Exit status 0 and the socket file removed, whether or not a front-end is attached."""
    d = start_daemon()
    fe = None
    if connected:
        fe = Frontend(str(d.socket_path), timeout=5.0).start()
        FuseClient(fe).init()
    os.kill(d.proc.pid, sig)
    try:
        assert d.proc.wait(10) == 0, d.log()
    finally:
        if fe is not None:
            fe.close()
    assert "Traceback" not in d.log()
    assert not d.socket_path.exists()


def test_exit_after_the_front_end_leaves(start_daemon: DaemonFactory) -> None:
    d = start_daemon()
    fe = Frontend(str(d.socket_path), timeout=5.0).start()
    FuseClient(fe).init()
    fe.close()
    deadline = time.monotonic() + 10
    while d.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.proc.returncode == 0, d.log()
    assert not d.socket_path.exists()
