"""OCI / Docker media types and annotations we read and write."""

from __future__ import annotations

OCI_LAYOUT_VERSION = "1.0.0"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)

# Tar layers we can read (compression is sniffed from the bytes anyway).
TAR_LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)

NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
BOOTSTRAP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ANN_NYDUS_BLOB = "containerd.io/snapshot/nydus-blob"
ANN_NYDUS_BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"
ANN_REF_NAME = "org.opencontainers.image.ref.name"
# Ours: on the bootstrap layer, "sha256:<hex>" of the raw bootstrap (IMAGE_DIR/image.boot's
# bytes), so the manifest digest pins the loose image.boot the daemon maps.
ANN_BOOTSTRAP_SHA256 = "io.github.virtiofsd-nydus.bootstrap.sha256"
BOOTSTRAP_TAR_PATH = "image/image.boot"
