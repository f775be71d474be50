"""A small OCI distribution client on httpx: auth, manifests, blobs (pull and push).

Auth follows the registry's WWW-Authenticate challenge: Basic with the credentials we have,
or Bearer (token from the realm, anonymous or with Basic credentials). A 401 later on
(an expired token) re-authenticates once. ``tls_verify=False`` also allows plain HTTP, as
skopeo does for local registries.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Iterator
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
        self._creds = creds or find_credentials(ref.registry, ref.repository)
        self._scope = f"repository:{self.repo}:pull" + (",push" if push else "")
        self._auth: str | None = None
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
                self._authenticate(resp)
            elif resp.status_code >= 400 and resp.status_code != 404:
                raise BackendError(f"registry {self.host}: /v2/ answered HTTP {resp.status_code}")
            return base
        raise BackendError(f"registry {self.host}: cannot connect ({last})")

    def _authenticate(self, resp: httpx.Response) -> None:
        header = resp.headers.get("www-authenticate", "")
        scheme, params = parse_challenge(header)
        if scheme == "basic":
            if self._creds is None:
                raise BackendError(
                    f"registry {self.host}: 401 unauthorized (no credentials given or found)"
                )
            token = f"{self._creds.username}:{self._creds.password}".encode()
            self._auth = "Basic " + base64.b64encode(token).decode()
        elif scheme == "bearer" and params.get("realm"):
            self._auth = "Bearer " + self._token(params)
        else:
            raise BackendError(
                f"registry {self.host}: 401 with an unsupported challenge {header!r}"
            )

    def _token(self, params: dict[str, str]) -> str:
        query = {"scope": params.get("scope") or self._scope}
        if params.get("service"):
            query["service"] = params["service"]
        auth = (self._creds.username, self._creds.password) if self._creds else None
        try:
            resp = self._client.get(params["realm"], params=query, auth=auth)
        except httpx.TransportError as exc:
            raise BackendError(
                f"registry {self.host}: token server {params['realm']}: {exc}"
            ) from None
        if resp.status_code != 200:
            raise BackendError(
                f"registry {self.host}: token server refused (HTTP {resp.status_code}"
                f"{', bad credentials' if resp.status_code == 401 else ''})"
            )
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except ValueError:
            token = None
        if not isinstance(token, str) or not token:
            raise BackendError(f"registry {self.host}: token server gave no token")
        return token

    def _send(self, method: str, url: str, stream: bool = False, **kw: Any) -> httpx.Response:
        if not url.startswith(("http://", "https://")):
            url = self.base + url
        for attempt in (0, 1):
            headers = dict(kw.pop("headers", None) or {})
            if self._auth:
                headers["Authorization"] = self._auth
            req = self._client.build_request(method, url, headers=headers, **kw)
            kw["headers"] = headers
            try:
                resp = self._client.send(req, stream=stream)
            except httpx.TransportError as exc:
                raise BackendError(f"registry {self.host}: {method} {url}: {exc}") from None
            if resp.status_code != 401 or attempt == 1 or "content" in kw:
                if resp.status_code == 401:
                    resp.close()
                    raise BackendError(f"registry {self.host}: 401 unauthorized for {self.repo}")
                return resp
            resp.close()
            self._authenticate(resp)
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

        def body() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while block := f.read(UPLOAD_BLOCK):
                    yield block

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        resp = self._send("PUT", url, headers=headers, content=body())
        self._check(resp, what, ok=(201, 204))

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> None:
        resp = self._send(
            "PUT",
            f"/v2/{self.repo}/manifests/{reference}",
            headers={"Content-Type": media_type},
            content=data,
        )
        self._check(resp, f"manifest {reference}", ok=(200, 201, 202))
