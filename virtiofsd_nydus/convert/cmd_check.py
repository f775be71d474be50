"""``vnydus check IMAGE_DIR``: bootstrap sections, Merkle tree, OCI wiring, every chunk.

Exit 0 only when everything checks out; otherwise every problem found is named.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import sys
import tarfile

from ..errors import ImageError, VnydusError
from ..format.reader import Bootstrap
from . import mediatypes as mt
from .blobread import LocalBlobs
from .imagedir import ImageDir, sha256_file
from .manifest import check_digest


def _check_oci(img: ImageDir, bs: Bootstrap, boot: bytes) -> list[str]:
    """index.json → manifest → layers: the bootstrap layer holds image.boot; blobs match."""
    problems = []
    try:
        manifest = img.manifest()
        layers = manifest.get("layers") or []
        boot_layers = [d for d in layers if d.get("mediaType") == mt.BOOTSTRAP_LAYER]
        data_layers = [d["digest"] for d in layers if d.get("mediaType") == mt.NYDUS_BLOB]
        if len(boot_layers) != 1:
            problems.append(f"manifest has {len(boot_layers)} bootstrap layers, want 1")
        else:
            raw = img.blob_path(boot_layers[0]["digest"]).read_bytes()
            check_digest(raw, boot_layers[0]["digest"], "bootstrap layer")
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw))) as tf:
                f = tf.extractfile(mt.BOOTSTRAP_TAR_PATH)
                if f is None or f.read() != boot:
                    problems.append("bootstrap layer does not hold this image.boot")
            pinned = (boot_layers[0].get("annotations") or {}).get(mt.ANN_BOOTSTRAP_SHA256)
            got = "sha256:" + hashlib.sha256(boot).hexdigest()
            if pinned is not None and pinned != got:
                problems.append(
                    f"bootstrap is {got}, the manifest's {mt.ANN_BOOTSTRAP_SHA256} says {pinned}"
                )
        if data_layers != [b.digest for b in bs.blobs]:
            problems.append("manifest data layers differ from the bootstrap's blob table")
    except (OSError, KeyError, tarfile.TarError, EOFError, ImageError) as exc:
        problems.append(f"OCI layout: {exc}")
    return problems


def check(image_dir: str) -> tuple[list[str], str]:
    img = ImageDir(image_dir)
    problems: list[str] = []
    with img.open_bootstrap() as bs:
        for step in (bs.verify, bs.verify_merkle):
            try:
                step()
            except ImageError as exc:
                problems.append(str(exc))
        problems += _check_oci(img, bs, img.bootstrap_bytes())
        for b in bs.blobs:
            p = img.blob_path(b.digest)
            if not p.is_file():
                problems.append(f"blob {b.digest} missing")
            elif os.path.getsize(p) != b.compressed_size:
                problems.append(
                    f"blob {b.digest}: {os.path.getsize(p)} bytes, want {b.compressed_size}"
                )
            elif sha256_file(p) != b.digest:
                problems.append(f"blob {b.digest}: content does not match its digest")
        blobs = LocalBlobs(img, bs)
        bad = 0
        try:
            for i in range(bs.chunk_count):
                try:
                    blobs.chunk_data(i)
                except VnydusError as exc:
                    bad += 1
                    if bad <= 20:
                        problems.append(str(exc))
        finally:
            blobs.close()
        if bad > 20:
            problems.append(f"... {bad} bad chunks in all")
        summary = f"{bs.chunk_count} chunks in {len(bs.blobs)} blobs, root {bs.root_digest.hex()}"
    return problems, summary


def run(args: argparse.Namespace) -> int:
    problems, summary = check(args.image_dir)
    if problems:
        for p in problems:
            print(f"{args.image_dir}: {p}", file=sys.stderr)
        print(f"check FAILED: {len(problems)} problem(s); {summary}")
        return 1
    print(f"ok: {summary}; bootstrap sections, Merkle tree, OCI layout and every chunk verified")
    return 0
