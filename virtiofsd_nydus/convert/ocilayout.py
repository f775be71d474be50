"""Write the converted image as an OCI image layout (reproducibly: sorted JSON, zero times)."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

from ..format.model import Blob
from . import mediatypes as mt
from .imagedir import BOOTSTRAP_NAME
from .platform import Platform


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def bootstrap_layer(boot: bytes) -> tuple[bytes, str]:
    """The bootstrap as nydus ships it: a tar.gz holding image/image.boot.
    Returns (tar.gz bytes, diff_id = sha256 of the tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo("image")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
        tf.addfile(d)
        f = tarfile.TarInfo(mt.BOOTSTRAP_TAR_PATH)
        f.size, f.mode, f.mtime = len(boot), 0o644, 0
        tf.addfile(f, io.BytesIO(boot))
    tar = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=gz, mode="wb", compresslevel=6, mtime=0) as g:
        g.write(tar)
    return gz.getvalue(), "sha256:" + hashlib.sha256(tar).hexdigest()


class LayoutWriter:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        self.blob_dir.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes) -> tuple[str, int]:
        hexd = hashlib.sha256(data).hexdigest()
        path = self.blob_dir / hexd
        if not path.exists():
            path.write_bytes(data)
        return "sha256:" + hexd, len(data)

    def link_blob(self, digest: str, src: Path) -> None:
        """Bring a chunk-dict image's blob in (hard link when possible)."""
        dst = self.blob_dir / digest.partition(":")[2]
        if dst.exists():
            return
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)

    def write(
        self,
        boot: bytes,
        blobs: list[Blob],
        source_config: dict[str, Any] | None,
        platform: Platform,
        ref_name: str | None,
    ) -> str:
        """Write bootstrap, config, manifest, and (last) index.json. Returns the manifest digest."""
        (self.root / BOOTSTRAP_NAME).write_bytes(boot)
        layer, layer_diff = bootstrap_layer(boot)
        boot_digest, boot_size = self.put(layer)
        layers = [
            {
                "mediaType": mt.NYDUS_BLOB,
                "digest": b.digest,
                "size": b.compressed_size,
                "annotations": {mt.ANN_NYDUS_BLOB: "true"},
            }
            for b in blobs
        ]
        layers.append(
            {
                "mediaType": mt.BOOTSTRAP_LAYER,
                "digest": boot_digest,
                "size": boot_size,
                "annotations": {
                    mt.ANN_NYDUS_BOOTSTRAP: "true",
                    mt.ANN_BOOTSTRAP_SHA256: "sha256:" + hashlib.sha256(boot).hexdigest(),
                },
            }
        )
        config = _config(source_config, platform, [b.digest for b in blobs] + [layer_diff])
        cdigest, csize = self.put(canonical_json(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": cdigest, "size": csize},
            "layers": layers,
        }
        mdigest, msize = self.put(canonical_json(manifest))
        desc: dict[str, Any] = {"mediaType": mt.OCI_MANIFEST, "digest": mdigest, "size": msize}
        if ref_name:
            desc["annotations"] = {mt.ANN_REF_NAME: ref_name}
        (self.root / "oci-layout").write_bytes(
            canonical_json({"imageLayoutVersion": mt.OCI_LAYOUT_VERSION})
        )
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [desc]}
        tmp = self.root / "index.json.tmp"
        tmp.write_bytes(canonical_json(index))
        os.replace(tmp, self.root / "index.json")
        return mdigest


def _config(
    source: dict[str, Any] | None, platform: Platform, diff_ids: list[str]
) -> dict[str, Any]:
    if source is None:
        cfg: dict[str, Any] = {
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {},
        }
        if platform.variant:
            cfg["variant"] = platform.variant
    else:
        cfg = copy.deepcopy(source)
    cfg["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    created = cfg.get("created")
    entry: dict[str, Any] = {"created_by": "vnydus convert"}
    if isinstance(created, str):
        entry["created"] = created
    cfg["history"] = [
        {**entry, "comment": "nydus data blob" if i < len(diff_ids) - 1 else "nydus bootstrap"}
        for i in range(len(diff_ids))
    ]
    return cfg
