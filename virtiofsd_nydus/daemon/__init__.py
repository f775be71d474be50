"""Command lines, configuration, the service that wires vhost, FUSE and storage together."""
