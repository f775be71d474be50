"""docker:// sources and --push against a real local registry (distribution 2.8)."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import assert_one_line_error, assert_same_tree, ok, unpack_tree, vnydus
from .images import run
from .registry import local_registry

pytestmark = pytest.mark.registry

if shutil.which("docker-registry") is None:
    pytest.skip("docker-registry not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with local_registry(tmp_path_factory.mktemp("registry")) as addr:
        yield addr


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with local_registry(tmp_path_factory.mktemp("authreg"), {"alice": "s3cret"}) as addr:
        yield addr


def _skopeo_push(layout: Path, dest: str, *extra: str) -> None:
    run("skopeo", "copy", "--dest-tls-verify=false", *extra, f"oci:{layout}:v1", dest)


def test_pull_convert_push_and_back(
    source_image: tuple[Path, Path], registry: str, tmp_path: Path
) -> None:
    layout, reference = source_image
    _skopeo_push(layout, f"docker://{registry}/src:v1")
    out = tmp_path / "out"
    stdout = ok(
        "convert",
        f"docker://{registry}/src:v1",
        out,
        "--chunk-size",
        "64K",
        "--tls-verify=false",
        "--push",
        f"docker://{registry}/conv:v1",
        "--dest-tls-verify=false",
    )
    assert "blobs uploaded" in stdout
    assert_same_tree(reference, unpack_tree(out, tmp_path / "a"))
    # skopeo copies the pushed image back; it unpacks (and checks) to the same tree
    back = tmp_path / "back"
    run(
        "skopeo", "copy", "--src-tls-verify=false", f"docker://{registry}/conv:v1", f"oci:{back}:v1"
    )
    assert "ok:" in ok("check", back)
    assert_same_tree(reference, unpack_tree(back, tmp_path / "b"))
    # pushing again uploads nothing: every blob is there already
    again = ok("push", out, f"docker://{registry}/conv:v2", "--dest-tls-verify=false")
    assert "0 blobs uploaded" in again
    # skopeo can also push the layout directly
    run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{out}", f"docker://{registry}/x:y")


def test_pull_by_digest(source_image: tuple[Path, Path], registry: str, tmp_path: Path) -> None:
    layout, reference = source_image
    _skopeo_push(layout, f"docker://{registry}/bydigest:v1")
    digest = run(
        "skopeo",
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        f"docker://{registry}/bydigest:v1",
    ).strip()
    out = tmp_path / "out"
    ok(
        "convert",
        f"docker://{registry}/bydigest@{digest}",
        out,
        "--tls-verify=false",
        "--chunk-size",
        "64K",
    )
    assert_same_tree(reference, unpack_tree(out, tmp_path))


def test_missing_tag_and_repo(registry: str, tmp_path: Path) -> None:
    r = vnydus("convert", f"docker://{registry}/nothing:here", tmp_path / "o", "--tls-verify=false")
    assert_one_line_error(r, "not found")
    assert not (tmp_path / "o").exists()


def test_basic_auth(source_image: tuple[Path, Path], auth_registry: str, tmp_path: Path) -> None:
    layout, reference = source_image
    _skopeo_push(layout, f"docker://{auth_registry}/priv:v1", "--dest-creds=alice:s3cret")
    src = f"docker://{auth_registry}/priv:v1"
    # no credentials: a clean 401
    env = {**os.environ, "HOME": str(tmp_path), "REGISTRY_AUTH_FILE": str(tmp_path / "none.json")}
    r = vnydus("convert", src, tmp_path / "o", "--tls-verify=false", env=env)
    assert_one_line_error(r, "401")
    r = vnydus(
        "convert", src, tmp_path / "o", "--tls-verify=false", "--src-creds=alice:wrong", env=env
    )
    assert_one_line_error(r, "401")
    assert not (tmp_path / "o").exists()
    # credentials from a containers auth.json
    auth = tmp_path / "auth.json"
    token = base64.b64encode(b"alice:s3cret").decode()
    auth.write_text(json.dumps({"auths": {auth_registry: {"auth": token}}}))
    env["REGISTRY_AUTH_FILE"] = str(auth)
    out = tmp_path / "out"
    ok(
        "convert",
        src,
        out,
        "--tls-verify=false",
        "--chunk-size",
        "64K",
        "--push",
        f"docker://{auth_registry}/conv:v1",
        "--dest-tls-verify=false",
        env=env,
    )
    assert_same_tree(reference, unpack_tree(out, tmp_path))
    run(
        "skopeo",
        "inspect",
        "--tls-verify=false",
        "--creds=alice:s3cret",
        f"docker://{auth_registry}/conv:v1",
    )
