"""Where chunk bytes come from: backends, the local cache, the verifying fetcher."""
