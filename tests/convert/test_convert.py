"""Conversion against real images (umoci-built), checked by differential unpack."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from .helpers import assert_same_tree, ok, unpack_tree, vnydus
from .images import CS, run


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_oci_layers_match_umoci_unpack(source_image: tuple[Path, Path], tmp_path: Path) -> None:
    layout, reference = source_image
    out = tmp_path / "out"
    stdout = ok("convert", f"oci:{layout}:v1", out, "--chunk-size", "64K")
    assert "3 layers" in stdout
    assert_same_tree(reference, unpack_tree(out, tmp_path))
    assert "ok:" in ok("check", out)
    # only the final visible tree is stored: deleted and overwritten data is not in the blob
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    assert not list(tmp_path.glob("out.tmp-*"))


def test_output_is_an_oci_layout_with_nydus_layers(
    source_image: tuple[Path, Path], tmp_path: Path
) -> None:
    layout, _ = source_image
    out = tmp_path / "out"
    ok("convert", f"oci:{layout}:v1", out, "--chunk-size", "64K")
    index = json.loads((out / "index.json").read_text())
    blobs = out / "blobs/sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    *data, boot = manifest["layers"]
    assert [d["mediaType"] for d in data] == ["application/vnd.oci.image.layer.nydus.blob.v1"]
    assert data[0]["annotations"] == {"containerd.io/snapshot/nydus-blob": "true"}
    assert boot["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    # the manifest pins image.boot (a loose file) by this annotation: the daemon checks it
    boot_sha = "sha256:" + hashlib.sha256((out / "image.boot").read_bytes()).hexdigest()
    assert boot["annotations"] == {
        "containerd.io/snapshot/nydus-bootstrap": "true",
        "io.github.virtiofsd-nydus.bootstrap.sha256": boot_sha,
    }
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    assert config["rootfs"]["diff_ids"][0] == data[0]["digest"]  # a raw blob is its own diff
    assert len(config["rootfs"]["diff_ids"]) == 2
    listing = subprocess.run(
        ["tar", "-tzf", blobs / boot["digest"][7:]], capture_output=True, text=True
    )
    assert "image/image.boot" in listing.stdout.split()
    assert (out / "image.boot").is_file()
    # skopeo reads it as a valid image
    run("skopeo", "copy", f"oci:{out}", f"oci:{tmp_path / 'copy'}:x")


def test_reproducible(source_image: tuple[Path, Path], tmp_path: Path) -> None:
    layout, _ = source_image
    ok("convert", f"oci:{layout}:v1", tmp_path / "a", "--chunk-size", "64K", "--jobs", "1")
    ok("convert", f"oci:{layout}:v1", tmp_path / "b", "--chunk-size", "64K", "--jobs", "2")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b


def test_docker_archive(source_image: tuple[Path, Path], tmp_path: Path) -> None:
    layout, reference = source_image
    archive = tmp_path / "img.tar"
    run("skopeo", "copy", f"oci:{layout}:v1", f"docker-archive:{archive}:x/y:v1")
    out = tmp_path / "out"
    ok("convert", f"docker-archive:{archive}", out, "--chunk-size", "64K")
    assert_same_tree(reference, unpack_tree(out, tmp_path))
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    ok("convert", f"docker-archive:{archive}:x/y:v1", tmp_path / "by-ref", "--chunk-size", "64K")
    r = vnydus("convert", f"docker-archive:{archive}:x/y:v2", tmp_path / "o")
    assert r.returncode == 1 and "no image 'x/y:v2'" in r.stderr


def _boundary_dir(root: Path, cs: int) -> None:
    import random

    rnd = random.Random(7)
    root.mkdir()
    for name, n in (
        ("exact", cs),
        ("minus", cs - 1),
        ("plus", cs + 1),
        ("two", 2 * cs),
        ("one", 1),
    ):
        (root / name).write_bytes(rnd.randbytes(n))
    (root / "empty").write_bytes(b"")
    with open(root / "sparse", "wb") as f:
        f.truncate(5 * cs + 10)
        f.seek(2 * cs + 5)
        f.write(b"data in the middle")
    os.symlink("exact", root / "link")
    os.link(root / "exact", root / "hard")


def test_dir_source_default_chunk_size(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _boundary_dir(src, 1 << 20)
    out = tmp_path / "out"
    r = vnydus("convert", f"dir:{src}", out, "--progress")  # forced on, though not a tty
    assert r.returncode == 0 and "MiB/s" in r.stderr and "Traceback" not in r.stderr
    assert_same_tree(src, unpack_tree(out, tmp_path))
    info = ok("inspect", out, "/sparse")
    assert info.count("chunk   @") == 1  # holes are not stored: one chunk with data


def test_tar_source_gnu_and_pax_sparse(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _boundary_dir(src, CS)
    for p in [src, *src.rglob("*")]:  # the GNU format keeps whole seconds only
        os.utime(p, ns=(1_700_000_000 * 10**9,) * 2, follow_symlinks=False)
    for fmt in ("gnu", "posix"):
        tar = tmp_path / f"{fmt}.tar.gz"
        subprocess.run(
            ["tar", f"--format={fmt}", "--sparse", "-czf", tar, "-C", src, "."],
            check=True,
            timeout=60,
        )
        out = tmp_path / f"out-{fmt}"
        ok("convert", f"tar:{tar}", out, "--chunk-size", "64K")
        assert_same_tree(src, unpack_tree(out, tmp_path / fmt))


def test_chunk_dict_stores_only_new_chunks(source_image: tuple[Path, Path], tmp_path: Path) -> None:
    layout, _ = source_image
    base = tmp_path / "base"
    ok("convert", f"oci:{layout}:v1", base, "--chunk-size", "64K")
    # image 2 = image 1 + one more layer with a new file and a copy of existing data
    layout2 = tmp_path / "src2"
    shutil.copytree(layout, layout2)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "new-file").write_bytes(os.urandom(CS + 5))
    (extra / "copy-of-exact").write_bytes(_reference_file(source_image, "data/exact"))
    subprocess.run(["tar", "-cf", tmp_path / "extra.tar", "-C", extra, "."], check=True)
    run("umoci", "raw", "add-layer", "--image", f"{layout2}:v1", tmp_path / "extra.tar")
    run("umoci", "unpack", "--image", f"{layout2}:v1", tmp_path / "ref2")
    out = tmp_path / "out"
    stdout = ok("convert", f"oci:{layout2}:v1", out, "--chunk-size", "64K", "--chunk-dict", base)
    assert "from chunk dict" in stdout
    assert_same_tree(tmp_path / "ref2/rootfs", unpack_tree(out, tmp_path))
    assert "ok:" in ok("check", out)
    manifest_layers = _manifest(out)["layers"]
    base_blob = _manifest(base)["layers"][0]["digest"]
    assert [d["digest"] for d in manifest_layers[:-1]][1:] == [base_blob]
    new_blob = manifest_layers[0]["size"]
    assert new_blob < 2 * CS + 200  # just the new file's two chunks (raw random data)


def _reference_file(source_image: tuple[Path, Path], rel: str) -> bytes:
    return (source_image[1] / rel).read_bytes()


def _manifest(out: Path) -> dict[str, object]:
    index = json.loads((out / "index.json").read_text())
    result: dict[str, object] = json.loads(
        (out / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text()
    )
    return result


def test_inspect_ls_and_paths(source_image: tuple[Path, Path], tmp_path: Path) -> None:
    layout, _ = source_image
    out = tmp_path / "out"
    ok("convert", f"oci:{layout}:v1", out, "--chunk-size", "64K")
    summary = ok("inspect", out)
    assert "root digest" in summary and "dedup ratio" in summary
    ls = ok("ls", out).splitlines()
    paths = {line.split("\t")[5].split(" -> ")[0] for line in ls}
    assert {"/etc/hello", "/data/xhl", "/opq/c", "/opq/d", "/twice"} <= paths
    assert "/opq/a" not in paths and "/old" not in paths and "/rel" not in paths
    one = ok("inspect", out, "/etc/hello")
    assert "xattr   user.test" in one and "mode 0600" in one
    r = vnydus("inspect", out, "/no/such")
    assert r.returncode == 1 and "no such file" in r.stderr


def test_check_compares_image_boot_with_its_annotation(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"some content\n")
    out = tmp_path / "out"
    ok("convert", f"dir:{src}", out)
    assert "ok:" in ok("check", out)
    # a manifest whose annotation disagrees with image.boot (re-pinned in index.json)
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    wrong = "sha256:" + "0" * 64
    manifest["layers"][-1]["annotations"]["io.github.virtiofsd-nydus.bootstrap.sha256"] = wrong
    data = json.dumps(manifest).encode()
    (out / "blobs/sha256" / hashlib.sha256(data).hexdigest()).write_bytes(data)
    index["manifests"][0].update(
        digest="sha256:" + hashlib.sha256(data).hexdigest(), size=len(data)
    )
    (out / "index.json").write_text(json.dumps(index))
    r = vnydus("check", out)
    assert r.returncode != 0 and wrong in r.stdout + r.stderr, r.stdout + r.stderr
