"""The daemon serves only what the trust chain vouches for: manifest digest → bootstrap layer
(and its bootstrap sha256 annotation) → image.boot. Real converted images throughout."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.daemon import rig
from tests.daemon.conftest import DaemonFactory
from tests.frontend import fuse_abi as fa
from tests.frontend.client import FuseClient
from tests.frontend.frontend import Frontend
from tests.vm.process import Daemon
from virtiofsd_nydus.convert import mediatypes as mt

HELLO = b"hello, virtio-fs\n" * 300


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest_digest(img: Path) -> str:
    digest = json.loads((img / "index.json").read_text())["manifests"][0]["digest"]
    assert isinstance(digest, str)
    return digest


def _manifest(img: Path) -> dict[str, object]:
    m = json.loads((img / "blobs/sha256" / _manifest_digest(img)[7:]).read_bytes())
    assert isinstance(m, dict)
    return m


def _copy(image: Path, dst: Path) -> Path:
    shutil.copytree(image, dst, symlinks=True)
    return dst


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*rig.DAEMON_ARGV, *args], capture_output=True, text=True, timeout=60, check=False
    )


def _refused(res: subprocess.CompletedProcess[str], *words: str) -> str:
    """One clear line naming WORDS, non-zero exit, no traceback, never ready."""
    assert res.returncode != 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert "Waiting for vhost-user" not in res.stderr, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("virtiofsd-nydus: ")]
    assert len(errors) == 1 and errors[0].startswith("virtiofsd-nydus: error: "), res.stderr
    for w in words:
        assert w in errors[0], res.stderr
    return errors[0]


def _reads_hello(d: Daemon) -> None:
    fe = Frontend(str(d.socket_path), timeout=5.0).start()
    try:
        fs = FuseClient(fe)
        fs.init()
        node = fs.lookup(fa.ROOT_ID, b"hello.txt").nodeid
        fh = fs.open(node).fh
        assert fs.read(node, fh, 0, len(HELLO)) == HELLO
    finally:
        fe.close()


def test_good_image_with_its_manifest_digest_serves(
    start_daemon: DaemonFactory, image: Path
) -> None:
    d = start_daemon("--manifest-digest", _manifest_digest(image))
    _reads_hello(d)
    assert "verified=True" in d.log()


def test_wrong_manifest_digest_is_refused(image: Path, tmp_path: Path) -> None:
    wrong = _sha(b"some other manifest")
    sock = tmp_path / "s"
    res = _cli("--socket-path", str(sock), "--image", str(image), "--manifest-digest", wrong)
    _refused(res, str(image / "index.json"), wrong, _manifest_digest(image))
    assert not sock.exists()  # refused before listening


def test_flipped_byte_in_image_boot_is_refused(image: Path, tmp_path: Path) -> None:
    bad = _copy(image, tmp_path / "img")
    boot = bytearray((bad / "image.boot").read_bytes())
    pinned = _sha(boot)
    boot[len(boot) // 2] ^= 0x01  # deep inside: the reader's own header checks would pass
    (bad / "image.boot").write_bytes(bytes(boot))
    sock = tmp_path / "s"
    res = _cli("--socket-path", str(sock), "--image", str(bad), "--cache-dir", str(tmp_path / "c"))
    _refused(res, str(bad / "image.boot"), pinned, _sha(boot), "mismatch")
    assert not sock.exists()
    # pinning the (untouched) manifest changes nothing: image.boot is still refused
    res = _cli(
        "--socket-path",
        str(sock),
        "--image",
        str(bad),
        "--manifest-digest",
        _manifest_digest(image),
    )
    _refused(res, str(bad / "image.boot"))


def test_tampered_manifest_blob_is_refused(image: Path, tmp_path: Path) -> None:
    bad = _copy(image, tmp_path / "img")
    blob = bad / "blobs/sha256" / _manifest_digest(image)[7:]
    data = blob.read_bytes().replace(b'"true"', b'"True"', 1)
    blob.unlink()  # the copy may be a symlink farm
    blob.write_bytes(data)
    res = _cli("--socket-path", str(tmp_path / "s"), "--image", str(bad))
    _refused(res, str(blob), _manifest_digest(image), _sha(data))


def _serve_copy(start_daemon: DaemonFactory, img: Path, sock_dir: Path, *extra: str) -> None:
    """Serve the image directory IMG (a changed copy) and read a file through it."""
    d = start_daemon(
        "--image", str(img), "--cache-dir", str(sock_dir / "cache"), *extra, serve_image=False
    )
    _reads_hello(d)


def test_image_without_image_boot_serves_from_its_layer(
    start_daemon: DaemonFactory, image: Path, tmp_path: Path, sock_dir: Path
) -> None:
    """As skopeo copies it back: the OCI layout alone, no image.boot."""
    img = _copy(image, tmp_path / "img")
    (img / "image.boot").unlink()
    _serve_copy(start_daemon, img, sock_dir, "--manifest-digest", _manifest_digest(image))
    assert not (img / "image.boot").exists()  # spilled to an unnamed file, not into the image


def _strip_annotation(img: Path) -> str:
    """Rewrite IMG as converted before the bootstrap annotation existed; the new digest."""
    manifest = _manifest(img)
    layers = manifest["layers"]
    assert isinstance(layers, list)
    del layers[-1]["annotations"][mt.ANN_BOOTSTRAP_SHA256]
    data = json.dumps(manifest).encode()
    (img / "blobs/sha256" / hashlib.sha256(data).hexdigest()).write_bytes(data)
    index = json.loads((img / "index.json").read_text())
    index["manifests"][0].update(digest=_sha(data), size=len(data))
    (img / "index.json").write_text(json.dumps(index))
    return _sha(data)


def test_image_without_annotation_checks_image_boot_against_its_layer(
    start_daemon: DaemonFactory, image: Path, tmp_path: Path, sock_dir: Path
) -> None:
    img = _copy(image, tmp_path / "img")
    digest = _strip_annotation(img)
    _serve_copy(start_daemon, img, sock_dir, "--manifest-digest", digest)
    boot = bytearray((img / "image.boot").read_bytes())
    good = _sha(boot)
    boot[len(boot) // 2] ^= 0x01
    (img / "image.boot").write_bytes(bytes(boot))
    res = _cli("--socket-path", str(tmp_path / "s"), "--image", str(img))
    _refused(res, str(img / "image.boot"), good, _sha(boot))
    (img / "image.boot").unlink()  # and with no image.boot at all, the layer serves
    _serve_copy(start_daemon, img, sock_dir)


def test_bootstrap_digest(start_daemon: DaemonFactory, image: Path, tmp_path: Path) -> None:
    boot, blobs = image / "image.boot", image / "blobs/sha256"
    right = _sha(boot.read_bytes())
    d = start_daemon(
        "--bootstrap",
        str(boot),
        "--blob-dir",
        str(blobs),
        "--bootstrap-digest",
        right,
        serve_image=False,
    )
    _reads_hello(d)
    assert "verified=True" in d.log()
    wrong = _sha(b"not it")
    res = _cli(
        "--socket-path",
        str(tmp_path / "s"),
        "--bootstrap",
        str(boot),
        "--blob-dir",
        str(blobs),
        "--bootstrap-digest",
        wrong,
    )
    _refused(res, str(boot), wrong, right)
    assert not (tmp_path / "s").exists()


def test_digest_flags_are_checked(image: Path, tmp_path: Path) -> None:
    sock = str(tmp_path / "s")
    boot, blobs = str(image / "image.boot"), str(image / "blobs/sha256")
    good = _manifest_digest(image)
    _refused(
        _cli("--socket-path", sock, "--image", str(image), "--manifest-digest", "abc"),
        "--manifest-digest",
    )
    _refused(
        _cli(
            "--socket-path",
            sock,
            "--bootstrap",
            boot,
            "--blob-dir",
            blobs,
            "--manifest-digest",
            good,
        ),
        "--manifest-digest",
    )
    _refused(
        _cli("--socket-path", sock, "--image", str(image), "--bootstrap-digest", good),
        "--bootstrap-digest",
    )


@pytest.mark.parametrize("missing", ["index.json", "manifest"])
def test_image_missing_its_oci_parts_is_refused(image: Path, tmp_path: Path, missing: str) -> None:
    img = _copy(image, tmp_path / "img")
    path = img / "index.json"
    if missing == "manifest":
        path = img / "blobs/sha256" / _manifest_digest(image)[7:]
    path.unlink()
    _refused(_cli("--socket-path", str(tmp_path / "s"), "--image", str(img)), path.name)
