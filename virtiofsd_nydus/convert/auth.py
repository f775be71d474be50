"""Registry credentials: docker config.json and containers auth.json, plus WWW-Authenticate.

Files tried in order (first hit wins), like podman/skopeo: $REGISTRY_AUTH_FILE,
$XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json,
$DOCKER_CONFIG/config.json, ~/.docker/config.json. In each file: a ``credHelpers`` entry for
the registry decides alone (its helper is run); else an ``auths`` entry with credentials;
else the ``credsStore`` helper. A helper that has no credentials for the registry is no hit.

Credential helpers follow the docker-credential-helpers protocol: ``docker-credential-NAME
get`` with the server URL on stdin answers ``{"ServerURL", "Username", "Secret"}`` on stdout,
or "credentials not found" and a non-zero exit.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..errors import LocalError

log = structlog.get_logger(__name__)

_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    @classmethod
    def parse(cls, text: str) -> Credentials:
        user, sep, pw = text.partition(":")
        if not sep or not user:
            raise LocalError("credentials must be USER:PASSWORD")
        return cls(user, pw)


def auth_files() -> list[Path]:
    env = os.environ
    files = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers/auth.json")
    home = Path(env.get("HOME") or os.path.expanduser("~"))
    files.append(home / ".config/containers/auth.json")
    if env.get("DOCKER_CONFIG"):
        files.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    files.append(home / ".docker/config.json")
    return files


def _keys(registry: str, repository: str) -> list[str]:
    """Most specific first: host/namespace/repo ... host, with and without a scheme."""
    keys = []
    parts = repository.split("/")
    for i in range(len(parts), 0, -1):
        keys.append(f"{registry}/{'/'.join(parts[:i])}")
    keys += [
        registry,
        f"https://{registry}",
        f"http://{registry}",
        f"https://{registry}/v2/",
        f"https://{registry}/v1/",
    ]
    if registry == "docker.io":
        keys += list(_HUB_KEYS)
    return keys


def _decode(entry: object, where: Path) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise LocalError(f"{where}: bad base64 'auth' entry") from None
        return Credentials(user, pw)
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(entry["username"], entry["password"])
    if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
        raise LocalError(
            f"{where}: the entry holds an identity token; identity (OAuth refresh) tokens are "
            "not supported: log in with a password, or use --src-creds/--dest-creds"
        )
    return None


def server_url(registry: str) -> str:
    """The name docker stores a registry's credentials under (what a helper is asked)."""
    return _HUB_KEYS[0] if registry == "docker.io" else registry


def run_helper(name: str, registry: str, where: Path) -> Credentials | None:
    """``docker-credential-NAME get`` for ``registry``; None when it has no credentials."""
    prog = f"docker-credential-{name}"
    what = f"credential helper {prog} (from {where})"
    url = server_url(registry)
    try:
        r = subprocess.run(
            [prog, "get"], input=url, capture_output=True, text=True, errors="replace"
        )
    except FileNotFoundError:
        raise LocalError(f"{what}: not found on PATH") from None
    except OSError as exc:
        raise LocalError(f"{what}: cannot run: {exc.strerror or exc}") from None
    out = r.stdout.strip()
    if r.returncode != 0:
        if "credentials not found" in out.lower():
            log.debug("credential helper has nothing", helper=prog, server=url)
            return None
        msg = (out or r.stderr.strip() or f"exit status {r.returncode}").splitlines()[0]
        raise LocalError(f"{what} failed for {url}: {msg}")
    try:
        answer = json.loads(out)
        user, secret = answer["Username"], answer["Secret"]
        if not isinstance(user, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise LocalError(f"{what}: not a credentials answer for {url}") from None
    if user == "<token>":
        raise LocalError(
            f"{what}: gave an identity token for {url}; identity (OAuth refresh) tokens "
            "are not supported: log in with a password, or use --src-creds/--dest-creds"
        )
    if not user and not secret:
        return None
    log.debug("using credentials from a helper", helper=prog, server=url)
    return Credentials(user, secret)


def _helper_for(conf: dict[str, object], registry: str) -> str | None:
    helpers = conf.get("credHelpers")
    if isinstance(helpers, dict):
        keys = _HUB_KEYS if registry == "docker.io" else (registry,)
        for key in keys:
            if isinstance(helpers.get(key), str) and helpers[key]:
                return str(helpers[key])
    return None


def find_credentials(registry: str, repository: str) -> Credentials | None:
    for path in auth_files():
        try:
            conf = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise LocalError(f"cannot read credentials file {path}: {exc}") from None
        if not isinstance(conf, dict):
            continue
        helper = _helper_for(conf, registry)
        if helper is not None:
            creds = run_helper(helper, registry, path)
            if creds is not None:
                return creds
            continue
        auths = conf.get("auths")
        if isinstance(auths, dict):
            for key in _keys(registry, repository):
                creds = _decode(auths.get(key), path)
                if creds is not None:
                    log.debug("using credentials", file=str(path), key=key)
                    return creds
        store = conf.get("credsStore")
        if isinstance(store, str) and store:
            creds = run_helper(store, registry, path)
            if creds is not None:
                return creds
    return None


_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="...",scope="..."`` → ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m or m.end() == pos:
            break
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    return scheme.lower(), params
