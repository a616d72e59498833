/* wasm_host._chost.pack (pack.c). */
#ifndef WASMGATE_PACK_H
#define WASMGATE_PACK_H
#include <Python.h>

/* pack(data, kind, numel) -> bytes | None: see pack.c. */
PyObject *chost_pack(PyObject *m, PyObject *args);

#endif
