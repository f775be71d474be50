"""Layer compressions (gzip, zstd, none) and picking an image from an index by platform."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import zstandard

from .helpers import assert_one_line_error, assert_same_tree, ok, unpack_tree, vnydus

LAYER = "application/vnd.oci.image.layer.v1.tar"


def _put(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def _get(layout: Path, digest: str) -> bytes:
    return (layout / "blobs/sha256" / digest[7:]).read_bytes()


def _index(layout: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((layout / "index.json").read_text())
    return result


def test_zstd_and_uncompressed_layers(source_image: tuple[Path, Path], tmp_path: Path) -> None:
    layout = tmp_path / "src"
    shutil.copytree(source_image[0], layout)
    index = _index(layout)
    manifest = json.loads(_get(layout, index["manifests"][0]["digest"]))
    recompress = [
        (lambda tar: zstandard.ZstdCompressor(level=3).compress(tar), LAYER + "+zstd"),
        (lambda tar: tar, LAYER),
    ]
    for layer, (fn, media_type) in zip(manifest["layers"], recompress, strict=False):
        raw = _get(layout, layer["digest"])
        tar = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        layer.update(_put(layout, fn(tar)), mediaType=media_type)
    index["manifests"][0].update(_put(layout, json.dumps(manifest).encode()))
    (layout / "index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    ok("convert", f"oci:{layout}:v1", out, "--chunk-size", "64K")
    assert_same_tree(source_image[1], unpack_tree(out, tmp_path))


def test_platform_from_index(source_image: tuple[Path, Path], tmp_path: Path) -> None:
    layout = tmp_path / "src"
    shutil.copytree(source_image[0], layout)
    index = _index(layout)
    full = index["manifests"][0]
    manifest = json.loads(_get(layout, full["digest"]))
    config = json.loads(_get(layout, manifest["config"]["digest"]))
    # an arm64 image made of the first layer only
    config.update(architecture="arm64", variant="v8")
    config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"][:1]
    small = dict(manifest, layers=manifest["layers"][:1])
    small["config"] = dict(manifest["config"], **_put(layout, json.dumps(config).encode()))
    arm = {"mediaType": full["mediaType"], **_put(layout, json.dumps(small).encode())}
    amd = {"mediaType": full["mediaType"], "digest": full["digest"], "size": full["size"]}
    oci_index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            dict(amd, platform={"os": "linux", "architecture": "amd64"}),
            dict(arm, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ],
    }
    top = _put(layout, json.dumps(oci_index).encode())
    index["manifests"] = [
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            **top,
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }
    ]
    (layout / "index.json").write_text(json.dumps(index))
    out_amd, out_arm = tmp_path / "amd", tmp_path / "arm"
    ok(
        "convert",
        f"oci:{layout}:multi",
        out_amd,
        "--platform",
        "linux/amd64",
        "--chunk-size",
        "64K",
    )
    assert_same_tree(source_image[1], unpack_tree(out_amd, tmp_path / "a"))
    ok("convert", f"oci:{layout}:multi", out_arm, "--platform", "linux/arm64/v8")
    paths = {line.split("\t")[-1] for line in ok("ls", out_arm).splitlines()}
    assert "/old/x" in paths and "/opq/c" not in paths  # layer 1 only
    arm_manifest = json.loads(_get(out_arm, _index(out_arm)["manifests"][0]["digest"]))
    arm_config = json.loads(_get(out_arm, arm_manifest["config"]["digest"]))
    assert arm_config["architecture"] == "arm64" and arm_config["variant"] == "v8"
    r = vnydus("convert", f"oci:{layout}:multi", tmp_path / "x", "--platform", "linux/s390x")
    assert_one_line_error(r, "no image for platform linux/s390x")


def test_challenge_parsing() -> None:
    from virtiofsd_nydus.convert.auth import parse_challenge

    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})
