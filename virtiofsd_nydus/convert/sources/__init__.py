"""Image sources, one module per transport (oci:, docker-archive:, docker://, dir:, tar:).

``open.open_source(text, options)`` parses a transport string and returns an ImageSource.
"""
