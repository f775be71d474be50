"""virtiofsd-nydus: lazy-loading container images for VM sandboxes."""

__version__ = "0.1.0"
