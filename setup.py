"""The optional compiled host (wasm_host/csrc/chost.c; see wasm_host/compiled.py).

Everything else about the package is in pyproject.toml. ``optional=True``: a machine without a C compiler or
Python headers still installs, and the pure-Python host serves (WASMGATE_HOST_PATH=auto logs a warning once).
The extension links against neither wasmtime nor onnxruntime: it is handed their functions' addresses at run
time, so it builds with nothing but CPython's headers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "wasm_host._chost",
            sources=["wasm_host/csrc/chost.c", "wasm_host/csrc/pack.c"],
            depends=["wasm_host/csrc/pack.h"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
