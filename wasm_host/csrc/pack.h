/* wasm_host._chost.pack (pack.c). */
#ifndef WASMGATE_PACK_H
#define WASMGATE_PACK_H
#include <Python.h>

/* pack(data, kind, numel) -> bytes | None: see pack.c. */
PyObject *chost_pack(PyObject *m, PyObject *args);
/* unpack(data, kind) -> list | None: see pack.c. */
PyObject *chost_unpack(PyObject *m, PyObject *args);

#endif
