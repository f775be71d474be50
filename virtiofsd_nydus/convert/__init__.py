"""From OCI sources to a bootstrap + chunk blobs, and back."""
