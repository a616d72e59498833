"""Where functions live: the manifest format, the local store, and the OCI registry store with its client,
artifact format and sync; and the source a runner fetches functions from."""
