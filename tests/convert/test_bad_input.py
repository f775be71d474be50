"""Bad input: one line naming the problem, a non-zero exit, no output left behind."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import assert_one_line_error, ok, vnydus


def _manifest_path(layout: Path) -> Path:
    index = json.loads((layout / "index.json").read_text())
    return layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]


def _first_layer(layout: Path) -> Path:
    m = json.loads(_manifest_path(layout).read_text())
    return layout / "blobs/sha256" / m["layers"][0]["digest"][7:]


def _rewrite_manifest(layout: Path, edit: Callable[[dict[str, object]], None]) -> None:
    mpath = _manifest_path(layout)
    m = json.loads(mpath.read_text())
    edit(m)
    data = json.dumps(m).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest="sha256:" + digest, size=len(data))
    (layout / "index.json").write_text(json.dumps(index))


def _corrupt_layer(layout: Path) -> None:
    p = _first_layer(layout)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _truncate_layer(layout: Path) -> None:
    # a truncated layer that is re-pinned in the manifest: the tar itself must be caught
    p = _first_layer(layout)
    tar = gzip.decompress(p.read_bytes())[:-5000]
    blob = gzip.compress(tar, mtime=0)
    digest = hashlib.sha256(blob).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(blob)

    def edit(m: dict[str, object]) -> None:
        m["layers"][0].update(digest="sha256:" + digest, size=len(blob))  # type: ignore[index]

    _rewrite_manifest(layout, edit)


def _missing_blob(layout: Path) -> None:
    _first_layer(layout).unlink()


def _bad_media_type(layout: Path) -> None:
    _rewrite_manifest(layout, lambda m: m["layers"][0].update(mediaType="application/x-foo"))  # type: ignore[index]


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (_corrupt_layer, ["layer 1"]),
        (_truncate_layer, ["layer 1"]),
        (_missing_blob, ["missing"]),
        (_bad_media_type, ["unsupported layer media type"]),
    ],
)
def test_damaged_oci_layout(
    source_image: tuple[Path, Path],
    tmp_path: Path,
    damage: Callable[[Path], None],
    words: list[str],
) -> None:
    layout = tmp_path / "src"
    shutil.copytree(source_image[0], layout)
    damage(layout)
    out = tmp_path / "out"
    r = vnydus("convert", f"oci:{layout}:v1", out)
    assert_one_line_error(r, *words)
    assert list(tmp_path.iterdir()) == [layout]  # no output, no temp dir


def test_digest_mismatch_is_named(source_image: tuple[Path, Path], tmp_path: Path) -> None:
    layout = tmp_path / "src"
    shutil.copytree(source_image[0], layout)
    p = _first_layer(layout)
    p.write_bytes(p.read_bytes() + b"\0" * 1024)  # still a valid gzip tar, wrong digest
    r = vnydus("convert", f"oci:{layout}:v1", tmp_path / "out")
    assert_one_line_error(r, "digest mismatch")


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_line_error(
        vnydus("convert", f"oci:{tmp_path / 'empty'}", tmp_path / "o"), "oci-layout"
    )
    assert_one_line_error(vnydus("convert", f"oci:{tmp_path / 'nope'}", tmp_path / "o"), "no such")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file at all" * 100)
    assert_one_line_error(vnydus("convert", f"tar:{junk}", tmp_path / "o"), "tar")
    assert_one_line_error(vnydus("convert", f"docker-archive:{junk}", tmp_path / "o"), "docker")
    assert_one_line_error(vnydus("convert", "nosuch:thing", tmp_path / "o"), "transport")
    assert not (tmp_path / "o").exists()


def test_truncated_plain_tar(tmp_path: Path) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(3):
            ti = tarfile.TarInfo(f"f{i}")
            ti.size = 3000
            tf.addfile(ti, io.BytesIO(b"x" * 3000))
    data = buf.getvalue()
    # mid-data, mid-header, and at a member boundary (no end-of-archive marker)
    for cut in (512 * 3, 512 + 100, 512 * 14):
        t = tmp_path / f"t{cut}.tar"
        t.write_bytes(data[:cut])
        r = vnydus("convert", f"tar:{t}", tmp_path / "o")
        assert_one_line_error(r)
        assert not (tmp_path / "o").exists()
    gz = tmp_path / "t.tar.gz"
    gz.write_bytes(gzip.compress(data)[:-20])
    assert_one_line_error(vnydus("convert", f"tar:{gz}", tmp_path / "o"), "gzip")


def test_bad_options_and_existing_output(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    assert_one_line_error(
        vnydus("convert", f"dir:{src}", tmp_path / "o", "--chunk-size", "3000"), "chunk size"
    )
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert_one_line_error(
        vnydus("convert", f"dir:{src}", tmp_path / "full"), "not an empty directory"
    )
    (tmp_path / "emptydir").mkdir()
    ok("convert", f"dir:{src}", tmp_path / "emptydir")  # an empty directory may be filled


def test_check_names_corruption(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(bytes(range(256)) * 1000)
    out = tmp_path / "out"
    ok("convert", f"dir:{src}", out, "--chunk-size", "64K")
    assert vnydus("check", out).returncode == 0
    m = json.loads(_manifest_path(out).read_text())
    blob = out / "blobs/sha256" / m["layers"][0]["digest"][7:]
    data = bytearray(blob.read_bytes())
    data[10] ^= 1
    blob.write_bytes(bytes(data))
    r = vnydus("check", out)
    assert r.returncode == 1
    assert "chunk 0" in r.stderr and "does not match its digest" in r.stderr
    assert "FAILED" in r.stdout
    boot = bytearray((out / "image.boot").read_bytes())
    boot[-3] ^= 1
    (out / "image.boot").write_bytes(bytes(boot))
    r = vnydus("check", out)
    assert r.returncode == 1 and "digest mismatch" in r.stderr
    assert "Traceback" not in r.stderr
