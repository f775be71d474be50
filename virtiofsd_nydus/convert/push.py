"""Push a converted image (an OCI layout) to a registry, uploading only missing blobs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import structlog

from ..errors import ImageError
from . import mediatypes as mt
from .auth import Credentials
from .manifest import check_digest, descriptor, parse_json
from .reference import parse_registry_ref
from .registry import RegistryClient

log = structlog.get_logger(__name__)


def push_image(
    image_dir: Path, dest: str, tls_verify: bool = True, creds: Credentials | None = None
) -> str:
    """Push the layout's (single) image to ``dest``; returns the manifest digest."""
    ref = parse_registry_ref(dest)
    blob_dir = image_dir / "blobs" / "sha256"

    def read(digest: str, what: str) -> bytes:
        path = blob_dir / digest.partition(":")[2]
        try:
            data = path.read_bytes()
        except OSError:
            raise ImageError(f"{image_dir}: {what} {digest} missing") from None
        check_digest(data, digest, f"{image_dir}: {what}")
        return data

    try:
        index = parse_json((image_dir / "index.json").read_bytes(), f"{image_dir}/index.json")
    except OSError:
        raise ImageError(f"{image_dir}: not an OCI layout (no index.json)") from None
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        raise ImageError(
            f"{image_dir}: want exactly one image in index.json, found {len(manifests)}"
        )
    mdesc = descriptor(manifests[0], f"{image_dir}/index.json")
    mbytes = read(mdesc["digest"], "manifest")
    manifest = parse_json(mbytes, "manifest")
    blobs = [descriptor(manifest.get("config"), "config")]
    blobs += [descriptor(d, "layer") for d in manifest.get("layers") or []]
    uploaded = skipped = 0
    sent = 0
    with RegistryClient(ref, tls_verify=tls_verify, creds=creds, push=True) as client:
        for d in blobs:
            digest = d["digest"]
            path = blob_dir / digest.partition(":")[2]
            if not path.is_file() or os.path.getsize(path) != d["size"]:
                raise ImageError(f"{image_dir}: blob {digest} missing or of the wrong size")
            if client.has_blob(digest):
                skipped += 1
                continue
            log.info("uploading blob", digest=digest, size=d["size"])
            client.upload_blob(digest, str(path), d["size"])
            uploaded += 1
            sent += d["size"]
        client.put_manifest(
            ref.tag or mdesc["digest"], mbytes, mdesc.get("mediaType") or mt.OCI_MANIFEST
        )
    print(
        f"pushed {ref} ({mdesc['digest']}): {uploaded} blobs uploaded ({sent:,} B), "
        f"{skipped} already there",
        file=sys.stdout,
    )
    return str(mdesc["digest"])
