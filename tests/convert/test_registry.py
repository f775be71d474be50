"""docker:// sources and --push against a real local registry (distribution 2.8)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .helpers import assert_one_line_error, assert_same_tree, ok, unpack_tree, vnydus
from .images import run
from .registry import local_registry
from .tokenserver import TokenServer

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


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TokenServer]]:
    """distribution with ``auth: token``; its realm is our TokenServer (user alice)."""
    tmp = tmp_path_factory.mktemp("tokenreg")
    tokens = TokenServer(tmp, {"alice": "s3cret"})
    with (
        tokens.running(),
        local_registry(tmp, auth_config=tokens.registry_auth_config()) as addr,
    ):
        yield addr, tokens


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


def _convert_and_push(src: str, out: Path, dest: str, env: dict[str, str]) -> None:
    """Pull SRC from the registry (plain HTTP), convert it into OUT and push it to DEST."""
    ok(
        "convert",
        src,
        out,
        "--tls-verify=false",
        "--chunk-size",
        "64K",
        "--push",
        dest,
        "--dest-tls-verify=false",
        env=env,
    )


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
    _convert_and_push(src, out, f"docker://{auth_registry}/conv:v1", env)
    assert_same_tree(reference, unpack_tree(out, tmp_path))
    run(
        "skopeo",
        "inspect",
        "--tls-verify=false",
        "--creds=alice:s3cret",
        f"docker://{auth_registry}/conv:v1",
    )


def _docker_config(tmp: Path, conf: dict[str, object]) -> dict[str, str]:
    """An environment whose only credentials file is $DOCKER_CONFIG/config.json = ``conf``."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    docker = tmp / "docker"
    docker.mkdir(exist_ok=True)
    (docker / "config.json").write_text(json.dumps(conf))
    env = {
        k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR")
    }
    return {**env, "HOME": str(home), "DOCKER_CONFIG": str(docker)}


def _auths(registry: str, user: str, password: str) -> dict[str, object]:
    return {"auths": {registry: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}


def test_token_auth(
    source_image: tuple[Path, Path], token_registry: tuple[str, TokenServer], tmp_path: Path
) -> None:
    """Bearer tokens from the realm, checked by the registry itself (signature, aud, access)."""
    addr, tokens = token_registry
    layout, reference = source_image
    # skopeo speaks the same token flow: a cross-check of the token server and the registry
    _skopeo_push(layout, f"docker://{addr}/priv:v1", "--dest-creds=alice:s3cret")
    src = f"docker://{addr}/priv:v1"
    # the registry checks the tokens itself: one from another key is refused
    manifest = f"http://{addr}/v2/priv/manifests/v1"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    (tmp_path / "forger").mkdir()
    with TokenServer(tmp_path / "forger", {}).running() as forger:
        forged = forger.issue("alice", ["repository:priv:pull"])
    assert (
        httpx.get(manifest, headers={**accept, "Authorization": f"Bearer {forged}"}).status_code
        == 401
    )
    genuine = tokens.issue("alice", ["repository:priv:pull"])
    assert (
        httpx.get(manifest, headers={**accept, "Authorization": f"Bearer {genuine}"}).status_code
        == 200
    )
    # no credentials: an anonymous token that grants nothing; the registry says 401
    env = _docker_config(tmp_path, {})
    r = vnydus("convert", src, tmp_path / "o", "--tls-verify=false", env=env)
    assert_one_line_error(r, "401", "no credentials")
    # a wrong password: the token server refuses it
    env = _docker_config(tmp_path, _auths(addr, "alice", "wrong"))
    r = vnydus("convert", src, tmp_path / "o", "--tls-verify=false", env=env)
    assert_one_line_error(r, "token server", "credentials of alice")
    assert not (tmp_path / "o").exists()
    # the right one, from $DOCKER_CONFIG/config.json: pull, convert, push through tokens
    env = _docker_config(tmp_path, _auths(addr, "alice", "s3cret"))
    tokens.requests.clear()
    out = tmp_path / "out"
    _convert_and_push(src, out, f"docker://{addr}/conv:v1", env)
    assert_same_tree(reference, unpack_tree(out, tmp_path / "a"))
    asked = [(q.user, q.scopes, q.status) for q in tokens.requests]
    # one token per client, each asked once (cached), the push one with pull,push
    assert asked == [
        ("alice", ["repository:priv:pull"], 200),
        ("alice", ["repository:conv:pull,push"], 200),
    ]
    run(
        "skopeo",
        "inspect",
        "--tls-verify=false",
        "--creds=alice:s3cret",
        f"docker://{addr}/conv:v1",
    )
    # `vnydus push` with a token server that answers OAuth-style (access_token only)
    tokens.token_field = "access_token"
    try:
        again = ok("push", out, f"docker://{addr}/conv:v2", "--dest-tls-verify=false", env=env)
    finally:
        tokens.token_field = "both"
    assert "0 blobs uploaded" in again
    # a token the registry refuses (expired) is renewed once, then the pull goes through
    tokens.requests.clear()
    tokens.expired = 1
    ok("convert", src, tmp_path / "out2", "--tls-verify=false", "--chunk-size", "64K", env=env)
    assert tokens.expired == 0
    assert [(q.user, q.scopes) for q in tokens.requests] == [
        ("alice", ["repository:priv:pull"]),
        ("alice", ["repository:priv:pull"]),
    ]
    assert_same_tree(reference, unpack_tree(tmp_path / "out2", tmp_path / "b"))


def test_token_anonymous(
    source_image: tuple[Path, Path], token_registry: tuple[str, TokenServer], tmp_path: Path
) -> None:
    """The realm gives anonymous tokens: pull of public/* works, pushing does not."""
    addr, tokens = token_registry
    layout, reference = source_image
    _skopeo_push(layout, f"docker://{addr}/public/app:v1", "--dest-creds=alice:s3cret")
    env = _docker_config(tmp_path, {})
    tokens.requests.clear()
    out = tmp_path / "out"
    ok(
        "convert",
        f"docker://{addr}/public/app:v1",
        out,
        "--tls-verify=false",
        "--chunk-size",
        "64K",
        env=env,
    )
    assert [(q.user, q.status) for q in tokens.requests] == [(None, 200)]
    assert_same_tree(reference, unpack_tree(out, tmp_path))
    r = vnydus("push", out, f"docker://{addr}/public/mine:v1", "--dest-tls-verify=false", env=env)
    assert_one_line_error(r, "401", "no credentials")


HELPER = """#!{python}
# docker-credential-helpers protocol: `get`, the server URL on stdin, JSON on stdout
import json, os, sys
store = json.load(open({store!r}))
url = sys.stdin.read().strip()
with open({store!r} + ".log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + " " + url + "\\n")
if sys.argv[1:] != ["get"]:
    sys.exit("unsupported")
if url not in store:
    print("credentials not found in native keychain")
    sys.exit(1)
if store[url] == "fail":
    print("the keychain is locked")
    sys.exit(1)
user, secret = store[url]
print(json.dumps({{"ServerURL": url, "Username": user, "Secret": secret}}))
"""


def _helper(tmp: Path, name: str, store: dict[str, object]) -> Path:
    """A real ``docker-credential-NAME`` executable in tmp/bin; returns the store's log."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    store_file = tmp / f"{name}-store.json"
    store_file.write_text(json.dumps(store))
    prog = bin_dir / f"docker-credential-{name}"
    prog.write_text(HELPER.format(python=sys.executable, store=str(store_file)))
    prog.chmod(0o755)
    return Path(str(store_file) + ".log")


def test_credential_helpers(
    source_image: tuple[Path, Path], auth_registry: str, tmp_path: Path
) -> None:
    """credHelpers and credsStore run docker-credential-NAME (htpasswd registry)."""
    layout, reference = source_image
    _skopeo_push(layout, f"docker://{auth_registry}/helped:v1", "--dest-creds=alice:s3cret")
    src = f"docker://{auth_registry}/helped:v1"
    good = _helper(tmp_path, "vtest", {auth_registry: ["alice", "s3cret"]})
    _helper(tmp_path, "empty", {})
    _helper(tmp_path, "broken", {auth_registry: "fail"})
    _helper(tmp_path, "idtoken", {auth_registry: ["<token>", "refresh-token"]})
    _helper(tmp_path, "wrongpw", {auth_registry: ["alice", "nope"]})

    def env_for(conf: dict[str, object]) -> dict[str, str]:
        env = _docker_config(tmp_path, conf)
        env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
        return env

    # a per-registry helper; the auths entry (wrong) is not used when credHelpers names one
    conf = {"credHelpers": {auth_registry: "vtest"}, **_auths(auth_registry, "alice", "wrong")}
    out = tmp_path / "out"
    ok("convert", src, out, "--tls-verify=false", "--chunk-size", "64K", env=env_for(conf))
    assert_same_tree(reference, unpack_tree(out, tmp_path / "a"))
    assert good.read_text().splitlines() == [f"get {auth_registry}"]
    # the default store, for pull and push
    conf = {"auths": {auth_registry: {}}, "credsStore": "vtest"}
    ok(
        "push",
        out,
        f"docker://{auth_registry}/helped-conv:v1",
        "--dest-tls-verify=false",
        env=env_for(conf),
    )
    run(
        "skopeo",
        "inspect",
        "--tls-verify=false",
        "--creds=alice:s3cret",
        f"docker://{auth_registry}/helped-conv:v1",
    )
    # "credentials not found": no credentials, so the registry's 401
    r = vnydus(
        "convert", src, tmp_path / "o", "--tls-verify=false", env=env_for({"credsStore": "empty"})
    )
    assert_one_line_error(r, "401", "no credentials")
    # wrong ones from the helper: the registry's 401
    r = vnydus(
        "convert", src, tmp_path / "o", "--tls-verify=false", env=env_for({"credsStore": "wrongpw"})
    )
    assert_one_line_error(r, "401", "as alice")
    # a helper that is not there, one that fails, one that answers an identity token
    for name, words in (
        ("missing", ("docker-credential-missing", "not found on PATH")),
        ("broken", ("docker-credential-broken", "the keychain is locked")),
        ("idtoken", ("docker-credential-idtoken", "identity", "not supported")),
    ):
        conf = {"credHelpers": {auth_registry: name}}
        r = vnydus("convert", src, tmp_path / "o", "--tls-verify=false", env=env_for(conf))
        assert_one_line_error(r, *words)
    assert not (tmp_path / "o").exists()
