"""A real local registry (Debian's docker-registry, distribution 2.8) for the tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # bcrypt lines for distribution's htpasswd (libxcrypt does $2b$)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_registry(
    tmp: Path, users: dict[str, str] | None = None, auth_config: str | None = None
) -> Iterator[str]:
    """Start docker-registry on 127.0.0.1:<free port>; yields "127.0.0.1:PORT".

    ``users``: htpasswd (Basic) auth; ``auth_config``: an ``auth:`` section of its own (the
    token server's, see tokenserver.py).
    """
    port = free_port()
    root = tmp / "storage"
    root.mkdir(parents=True, exist_ok=True)
    auth = auth_config or ""
    if users:
        htpasswd = tmp / "htpasswd"
        htpasswd.write_text(
            "".join(
                f"{u}:{crypt.crypt(p, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}\n"
                for u, p in users.items()
            )
        )
        auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
    conf = tmp / "config.yml"
    conf.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    log = open(tmp / "registry.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["docker-registry", "serve", str(conf)], stdout=log, stderr=log)
    addr = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{addr}/v2/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # 401: up, with auth
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"registry did not start: {(tmp / 'registry.log').read_text()}"
                    ) from None
                time.sleep(0.1)
        yield addr
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
