"""Registry credentials: docker config.json and containers auth.json, plus WWW-Authenticate.

Files tried in order (first hit wins), like podman/skopeo: $REGISTRY_AUTH_FILE,
$XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json,
$DOCKER_CONFIG/config.json, ~/.docker/config.json. Credential helpers are not run.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
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
    return None


def find_credentials(registry: str, repository: str) -> Credentials | None:
    for path in auth_files():
        try:
            conf = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise LocalError(f"cannot read credentials file {path}: {exc}") from None
        auths = conf.get("auths") if isinstance(conf, dict) else None
        if isinstance(auths, dict):
            for key in _keys(registry, repository):
                creds = _decode(auths.get(key), path)
                if creds is not None:
                    log.debug("using credentials", file=str(path), key=key)
                    return creds
        helpers = conf.get("credHelpers") if isinstance(conf, dict) else None
        if (isinstance(helpers, dict) and registry in helpers) or conf.get("credsStore"):
            log.warning("credential helpers are not supported; ignoring", file=str(path))
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
