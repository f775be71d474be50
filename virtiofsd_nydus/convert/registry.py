"""A small OCI distribution client on httpx: auth, manifests, blobs (pull and push).

Auth follows the registry's WWW-Authenticate challenge: Basic with the credentials we have,
or Bearer (a token from the realm, anonymous or with Basic credentials, cached per scope).
A 401 later on (an expired token) re-authenticates and sends the request once more.
``tls_verify=False`` also allows plain HTTP, as skopeo does for local registries.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import structlog

from .. import __version__
from ..errors import BackendError, ImageError
from . import mediatypes as mt
from .auth import Credentials, find_credentials, parse_challenge
from .manifest import check_digest
from .reference import RegistryRef

log = structlog.get_logger(__name__)

MANIFEST_ACCEPT = ", ".join((mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_LIST, mt.DOCKER_MANIFEST))
MAX_MANIFEST = 8 << 20
UPLOAD_BLOCK = 1 << 20


class _IterReader:
    """A ``read(n)`` view of an httpx byte iterator (the response body, streamed)."""

    def __init__(self, it: Iterator[bytes]) -> None:
        self._it = it
        self._buf = b""

    def read(self, n: int = -1, /) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                more = next(self._it)
            except StopIteration:
                break
            self._buf += more if self._buf else bytes(more)
            if n < 0:
                continue
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _error_text(resp: httpx.Response) -> str:
    try:
        errs = resp.json().get("errors") or []
        return (
            "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errs)
            or resp.reason_phrase
        )
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        return resp.reason_phrase


class RegistryClient:
    def __init__(
        self,
        ref: RegistryRef,
        tls_verify: bool = True,
        creds: Credentials | None = None,
        push: bool = False,
        timeout: float = 60.0,
    ) -> None:
        self.ref = ref
        self.host = ref.api_host
        self.repo = ref.repository
        # Stored credentials are looked up on the first challenge only: an anonymous registry
        # never runs a credential helper.
        self._creds = creds
        self._creds_known = creds is not None
        self._actions = ("pull", "push") if push else ("pull",)
        self._scope = f"repository:{self.repo}:{','.join(self._actions)}"
        self._auth: str | None = None  # the Authorization header sent with each request
        self._tokens: dict[str, str] = {}  # bearer tokens by the scopes they were asked for
        self._lock = threading.Lock()  # layer downloads run on another thread
        self._client = httpx.Client(
            verify=tls_verify,
            timeout=httpx.Timeout(timeout, connect=15.0),
            follow_redirects=True,
            headers={"User-Agent": f"vnydus/{__version__}"},
        )
        self.base = self._probe(tls_verify)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection and auth ----------------------------------------------------------
    def _probe(self, tls_verify: bool) -> str:
        schemes = ["https"] if tls_verify else ["https", "http"]
        last: Exception | None = None
        for scheme in schemes:
            base = f"{scheme}://{self.host}"
            try:
                resp = self._client.get(f"{base}/v2/")
            except httpx.TransportError as exc:
                last = exc
                continue
            if resp.status_code == 401:
                self._authenticate(resp, None)
            elif resp.status_code >= 400 and resp.status_code != 404:
                raise BackendError(f"registry {self.host}: /v2/ answered HTTP {resp.status_code}")
            return base
        raise BackendError(f"registry {self.host}: cannot connect ({last})")

    def _credentials(self) -> Credentials | None:
        if not self._creds_known:
            self._creds = find_credentials(self.ref.registry, self.repo)
            self._creds_known = True
        return self._creds

    def _unauthorized(self, resp: httpx.Response | None = None) -> BackendError:
        creds = self._credentials()
        if creds is None:
            why = "no credentials given or found"
        else:
            why = f"as {creds.username}"
            if resp is not None:
                with contextlib.suppress(httpx.HTTPError):
                    resp.read()
                text = _error_text(resp)
                why += f": {text}" if text and text != resp.reason_phrase else ""
        return BackendError(f"registry {self.host}: 401 unauthorized for {self.repo} ({why})")

    def _authenticate(self, resp: httpx.Response, sent: str | None) -> None:
        """Answer a 401 to a request that carried ``sent`` as its Authorization header."""
        header = resp.headers.get("www-authenticate", "")
        scheme, params = parse_challenge(header)
        with self._lock:
            if self._auth != sent:
                return  # another thread renewed it meanwhile: try that
            if scheme == "basic":
                creds = self._credentials()
                if creds is None:
                    raise self._unauthorized()
                token = f"{creds.username}:{creds.password}".encode()
                auth = "Basic " + base64.b64encode(token).decode()
                if auth == sent:  # the same credentials again would fail again
                    raise self._unauthorized(resp)
            elif scheme == "bearer" and params.get("realm"):
                scopes = self._scopes(params.get("scope", ""))
                key = " ".join(scopes)
                cached = self._tokens.get(key)
                if cached is None or f"Bearer {cached}" == sent:
                    cached = self._tokens[key] = self._token(params, scopes)
                auth = f"Bearer {cached}"
            else:
                raise BackendError(
                    f"registry {self.host}: 401 with an unsupported challenge {header!r}"
                )
            self._auth = auth

    def _scopes(self, challenge: str) -> list[str]:
        """Our own scope, plus what the challenge asks for beyond it."""
        scopes = [self._scope]
        for scope in challenge.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            covered = (
                kind == "repository"
                and name == self.repo
                and set(actions.split(",")) <= set(self._actions)
            )
            if not covered and scope not in scopes:
                scopes.append(scope)
        return scopes

    def _token(self, params: dict[str, str], scopes: list[str]) -> str:
        """A bearer token from the challenge's realm (with Basic credentials when we have any).

        The token server's answer carries it as ``token`` or (OAuth 2 style) ``access_token``.
        """
        realm = params["realm"]
        query: list[tuple[str, Any]] = [("scope", s) for s in scopes]
        if params.get("service"):
            query.append(("service", params["service"]))
        creds = self._credentials()
        if creds is not None:
            query.append(("account", creds.username))
        auth = (creds.username, creds.password) if creds else None
        try:
            resp = self._client.get(realm, params=query, auth=auth)
        except httpx.TransportError as exc:
            raise BackendError(f"registry {self.host}: token server {realm}: {exc}") from None
        if resp.status_code == 401:
            who = (
                f"refused the credentials of {creds.username}"
                if creds
                else "wants credentials (none given or found)"
            )
            raise BackendError(f"registry {self.host}: token server {realm} {who} (HTTP 401)")
        if resp.status_code != 200:
            raise BackendError(
                f"registry {self.host}: token server {realm} answered HTTP {resp.status_code}"
            )
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise BackendError(f"registry {self.host}: token server {realm} gave no token")
        log.debug("got a registry token", realm=realm, scopes=scopes)
        return token

    def _send(
        self,
        method: str,
        url: str,
        stream: bool = False,
        content: bytes | Callable[[], Iterator[bytes]] | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """One request; on a 401, authenticate as the challenge says and send it once more.

        ``content`` may be a function giving a fresh body iterator, so a streamed upload
        can be sent again too.
        """
        if not url.startswith(("http://", "https://")):
            url = self.base + url
        headers = dict(kw.pop("headers", None) or {})
        for attempt in (0, 1):
            sent = self._auth
            if sent:
                headers["Authorization"] = sent
            body = content() if callable(content) else content
            req = self._client.build_request(method, url, headers=headers, content=body, **kw)
            try:
                resp = self._client.send(req, stream=stream)
            except httpx.TransportError as exc:
                raise BackendError(f"registry {self.host}: {method} {url}: {exc}") from None
            if resp.status_code != 401:
                return resp
            if attempt == 1:
                try:
                    raise self._unauthorized(resp)
                finally:
                    resp.close()
            resp.close()
            self._authenticate(resp, sent)
        raise AssertionError("unreachable")

    def _check(self, resp: httpx.Response, what: str, ok: tuple[int, ...] = (200,)) -> None:
        if resp.status_code in ok:
            return
        if resp.is_stream_consumed is False and not resp.is_closed:
            with contextlib.suppress(httpx.HTTPError):
                resp.read()
        text = _error_text(resp)
        resp.close()
        if resp.status_code == 404:
            raise ImageError(f"{what}: not found in {self.host}/{self.repo} (404 {text})")
        raise BackendError(
            f"{what}: registry {self.host} answered HTTP {resp.status_code} ({text})"
        )

    # -- pulling ----------------------------------------------------------------------
    def get_manifest(self, reference: str) -> tuple[bytes, str | None, str]:
        what = f"docker://{self.ref.registry}/{self.repo}: manifest {reference}"
        resp = self._send(
            "GET", f"/v2/{self.repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
        )
        self._check(resp, what)
        data = resp.content
        if len(data) > MAX_MANIFEST:
            raise ImageError(f"{what}: too large")
        if reference.startswith("sha256:"):
            check_digest(data, reference, what)
            digest = reference
        else:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
        ctype = resp.headers.get("content-type", "").split(";")[0].strip() or None
        return data, ctype, digest

    def get_blob(self, desc: dict[str, Any], what: str) -> bytes:
        if desc["size"] > MAX_MANIFEST:
            raise ImageError(f"{what}: too large ({desc['size']} bytes)")
        resp = self._send("GET", f"/v2/{self.repo}/blobs/{desc['digest']}")
        self._check(resp, what)
        check_digest(resp.content, desc["digest"], what)
        return resp.content

    @contextlib.contextmanager
    def open_blob(self, digest: str, what: str) -> Iterator[_IterReader]:
        """The blob's bytes as a stream; the caller checks the digest as it reads."""
        resp = self._send("GET", f"/v2/{self.repo}/blobs/{digest}", stream=True)
        try:
            self._check(resp, what)
            try:
                yield _IterReader(resp.iter_raw(1 << 20))
            except httpx.TransportError as exc:
                raise BackendError(f"{what}: download failed: {exc}") from None
        finally:
            resp.close()

    # -- pushing ----------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        resp = self._send("HEAD", f"/v2/{self.repo}/blobs/{digest}")
        resp.close()
        if resp.status_code == 404:
            return False
        self._check(resp, f"blob {digest}")
        return True

    def upload_blob(self, digest: str, path: str, size: int) -> None:
        """Monolithic upload: POST a session, PUT the bytes (streamed from the file)."""
        what = f"upload of {digest}"
        resp = self._send("POST", f"/v2/{self.repo}/blobs/uploads/")
        self._check(resp, what, ok=(202,))
        location = resp.headers.get("location")
        if not location:
            raise BackendError(f"{what}: registry gave no upload location")
        url = str(httpx.URL(self.base + "/").join(location))
        url += ("&" if "?" in url else "?") + f"digest={digest}"

        def body() -> Iterator[bytes]:  # a function: sent again after a 401
            with open(path, "rb") as f:
                while block := f.read(UPLOAD_BLOCK):
                    yield block

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        resp = self._send("PUT", url, headers=headers, content=body)
        self._check(resp, what, ok=(201, 204))

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> None:
        resp = self._send(
            "PUT",
            f"/v2/{self.repo}/manifests/{reference}",
            headers={"Content-Type": media_type},
            content=data,
        )
        self._check(resp, f"manifest {reference}", ok=(200, 201, 202))
