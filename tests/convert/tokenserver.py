"""A small Docker token server (the realm of distribution's ``auth: token``) for the tests.

It checks Basic credentials sent to the realm and issues ES256 JWTs whose ``x5c`` header
carries the signing certificate; that certificate is the registry's ``rootcertbundle``, so
the real registry verifies every token itself (issuer, audience, times, signature, access).

Policy: a known user with the right password gets ``pull`` and ``push`` on any repository
it asks for; a wrong password gets 401; no credentials gets an anonymous token that grants
``pull`` on repositories under ``public/`` only (and nothing elsewhere), as public
registries do.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

SERVICE = "vnydus-test-registry"
ISSUER = "vnydus-test-token-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Request:
    """What the realm was asked: who (None: anonymous, or the bad user) and which scopes."""

    user: str | None
    scopes: list[str]
    status: int


@dataclass
class TokenServer:
    tmp: Path
    users: dict[str, str]
    service: str = SERVICE
    issuer: str = ISSUER
    # "token", "access_token" or "both": which JSON field(s) carry the token
    token_field: str = "both"
    # the next this-many tokens are issued already expired (an hour ago): the registry
    # refuses them, so a client must ask for a new one
    expired: int = 0
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vnydus test token signer")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.rootcertbundle = self.tmp / "token-root.crt"
        self.rootcertbundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self._httpd.server_address[1]}/token"

    # -- tokens ----------------------------------------------------------------------
    def _grant(self, user: str | None, scopes: list[str]) -> list[dict[str, object]]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            wanted = set(actions.split(","))
            if user is not None:
                allowed = wanted & {"pull", "push"}
            elif name.startswith("public/"):
                allowed = wanted & {"pull"}
            else:
                allowed = set()
            if allowed:
                access.append({"type": "repository", "name": name, "actions": sorted(allowed)})
        return access

    def issue(self, user: str | None, scopes: list[str]) -> str:
        with self._lock:
            expired, self.expired = self.expired > 0, max(0, self.expired - 1)
        now = int(time.time())
        exp = now - 3600 if expired else now + 300
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": exp,
            "nbf": now - 7200 if expired else now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": self._grant(user, scopes),
        }
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    # -- HTTP ------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reply(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="vnydus test tokens"')
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path != "/token":
                    self._reply(404, {"details": "not found"})
                    return
                query = parse_qs(url.query)
                scopes = [s for v in query.get("scope", []) for s in v.split(" ") if s]
                user: str | None = None
                header = self.headers.get("Authorization", "")
                if header.lower().startswith("basic "):
                    try:
                        text = base64.b64decode(header[6:], validate=True).decode()
                    except (binascii.Error, UnicodeDecodeError):
                        text = ""
                    name, _, password = text.partition(":")
                    ok = name in server.users and secrets.compare_digest(
                        server.users[name], password
                    )
                    if not ok:
                        server.requests.append(Request(name or None, scopes, 401))
                        self._reply(401, {"details": "incorrect username or password"})
                        return
                    user = name
                if query.get("service", [server.service])[0] != server.service:
                    server.requests.append(Request(user, scopes, 400))
                    self._reply(400, {"details": "unknown service"})
                    return
                token = server.issue(user, scopes)
                body: dict[str, object] = {
                    "expires_in": 300,
                    "issued_at": dt.datetime.now(dt.UTC).isoformat(),
                }
                if server.token_field in ("token", "both"):
                    body["token"] = token
                if server.token_field in ("access_token", "both"):
                    body["access_token"] = token
                server.requests.append(Request(user, scopes, 200))
                self._reply(200, body)

        return Handler

    def registry_auth_config(self) -> str:
        """The ``auth:`` section of the registry's config.yml."""
        return (
            "auth:\n  token:\n"
            f"    realm: {self.realm}\n"
            f"    service: {self.service}\n"
            f"    issuer: {self.issuer}\n"
            f"    rootcertbundle: {self.rootcertbundle}\n"
        )

    @contextlib.contextmanager
    def running(self) -> Iterator[TokenServer]:
        thread = threading.Thread(target=self._httpd.serve_forever, name="token-server")
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            thread.join()
            self._httpd.server_close()
