"""The HTTP edge of wasmgate: the app and its wiring, the OIP v2 codec and endpoints, the request dispatch, the
admin API, settings and errors; with subpackages for functions (serving and pushing), the store, the OpenAPI
document and the ``wasm`` CLI."""
