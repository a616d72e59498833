"""The HTTP edge of wasmgate: the app, the OIP v2 codec, the admin API, the store, settings and the CLI."""
