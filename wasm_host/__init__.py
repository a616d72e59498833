"""The sandbox: the wasmtime engine, guest instances and their pools, and the WASI-NN host on onnxruntime.
It knows nothing of HTTP."""
