/* wasm_host._chost.pack: a JSON tensor's numbers, as a request body's parser produced them (Python lists of
 * ints and floats), packed into the tensor's little-endian bytes in one pass (see gateway/codec.py); and
 * wasm_host._chost.unpack, the other way for an answer: a tensor's bytes as a flat list of Python numbers.
 *
 * It only ever takes the common case: a list (nested to at most PACK_MAX_DEPTH levels, every list at one depth
 * of the same length, as numpy requires of an array) whose leaves are ints and floats that the datatype holds
 * exactly as numpy would convert them. For anything else it answers None, and the caller's numpy path (the
 * reference) gives its verdict and its words: a ragged or mistyped list, a bool, a non-finite or out-of-range
 * number, a count that does not match the shape. So the bytes are the numpy path's bytes, and every error
 * is its error (tests/test_codec_pack.py compares the two).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "pack.h"

#define PACK_MAX_DEPTH 8
/* Ints past 2^53 would round once into a double and again into the target: numpy converts them in one step. */
#define EXACT_IN_DOUBLE (1LL << 53)

typedef struct {
    char kind;      /* 'f' FP32, 'd' FP64, 'i' INT32, 'q' INT64 */
    char *out;      /* the next element's place */
    Py_ssize_t lens[PACK_MAX_DEPTH];
    int depth;      /* how deep the lists go */
} packer;

/* One leaf into the buffer; 0: not taken (None for the whole tensor). */
static int put(packer *p, PyObject *v) {
    if (p->kind == 'f' || p->kind == 'd') {
        double d;
        if (PyFloat_CheckExact(v)) {
            d = PyFloat_AS_DOUBLE(v);
        } else if (PyLong_CheckExact(v)) {
            int overflow = 0;
            long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (overflow || n > EXACT_IN_DOUBLE || n < -EXACT_IN_DOUBLE) return 0;
            d = (double)n;
        } else {
            return 0;  /* a bool, a string, null, an object */
        }
        if (!isfinite(d)) return 0;
        if (p->kind == 'f') {
            if (fabs(d) > FLT_MAX) return 0;
            float f = (float)d;  /* round to nearest even, as numpy's cast */
            memcpy(p->out, &f, 4);
            p->out += 4;
        } else {
            memcpy(p->out, &d, 8);
            p->out += 8;
        }
        return 1;
    }
    if (!PyLong_CheckExact(v)) return 0;  /* a float or a bool is numpy's to refuse */
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) return 0;
    if (p->kind == 'i') {
        if (n > INT32_MAX || n < INT32_MIN) return 0;
        int32_t i = (int32_t)n;
        memcpy(p->out, &i, 4);
        p->out += 4;
    } else {
        int64_t q = (int64_t)n;
        memcpy(p->out, &q, 8);
        p->out += 8;
    }
    return 1;
}

/* The lists at ``level`` and below, row-major; 0: not taken. */
static int fill(packer *p, PyObject *list, int level) {
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (n != p->lens[level]) return 0;
    PyObject **items = ((PyListObject *)list)->ob_item;
    if (level + 1 < p->depth) {
        for (Py_ssize_t i = 0; i < n; i++)
            if (!PyList_CheckExact(items[i]) || !fill(p, items[i], level + 1)) return 0;
        return 1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (!put(p, items[i])) return 0;
    return 1;
}

PyObject *chost_pack(PyObject *m, PyObject *args) {
    PyObject *data;
    int kind;
    Py_ssize_t numel;
    if (!PyArg_ParseTuple(args, "OCn", &data, &kind, &numel)) return NULL;
    Py_ssize_t size;
    switch (kind) {
        case 'f': case 'i': size = 4; break;
        case 'd': case 'q': size = 8; break;
        default: return PyErr_Format(PyExc_ValueError, "kind must be one of f, d, i, q");
    }
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    Py_RETURN_NONE;  /* the wire is little-endian: numpy's path swaps */
#endif
    if (!PyList_CheckExact(data) || numel <= 0 || numel > PY_SSIZE_T_MAX / size) Py_RETURN_NONE;
    packer p = {.kind = (char)kind, .depth = 0};
    /* The shape from the first element at each depth; fill() holds every other list to it. */
    PyObject *item = data;
    Py_ssize_t count = 1;
    while (PyList_CheckExact(item)) {
        Py_ssize_t n = PyList_GET_SIZE(item);
        if (p.depth == PACK_MAX_DEPTH || n == 0) Py_RETURN_NONE;
        p.lens[p.depth++] = n;
        if (count > numel / n) Py_RETURN_NONE;
        count *= n;
        item = PyList_GET_ITEM(item, 0);
    }
    if (count != numel) Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, numel * size);
    if (!out) return NULL;
    p.out = PyBytes_AS_STRING(out);
    if (!fill(&p, data, 0)) {
        Py_DECREF(out);
        if (PyErr_Occurred()) PyErr_Clear();
        Py_RETURN_NONE;
    }
    return out;
}

/* unpack(data, kind) -> list: the little-endian elements of ``data`` as Python floats (FP32 widened to the double
 * it is exactly, as numpy's tolist() gives it) or ints; None where the wire's order is not this machine's, or
 * for a length that is not a whole number of elements, for numpy to handle. */
PyObject *chost_unpack(PyObject *m, PyObject *args) {
    Py_buffer view;
    int kind;
    if (!PyArg_ParseTuple(args, "y*C", &view, &kind)) return NULL;
    Py_ssize_t size;
    switch (kind) {
        case 'f': case 'i': size = 4; break;
        case 'd': case 'q': size = 8; break;
        default: PyBuffer_Release(&view); return PyErr_Format(PyExc_ValueError, "kind must be one of f, d, i, q");
    }
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
#endif
    if (view.len % size) { PyBuffer_Release(&view); Py_RETURN_NONE; }
    Py_ssize_t n = view.len / size;
    PyObject *out = PyList_New(n);
    if (!out) { PyBuffer_Release(&view); return NULL; }
    const char *p = view.buf;
    for (Py_ssize_t i = 0; i < n; i++, p += size) {
        PyObject *v;
        if (kind == 'f') { float f; memcpy(&f, p, 4); v = PyFloat_FromDouble((double)f); }
        else if (kind == 'd') { double d; memcpy(&d, p, 8); v = PyFloat_FromDouble(d); }
        else if (kind == 'i') { int32_t x; memcpy(&x, p, 4); v = PyLong_FromLong(x); }
        else { int64_t x; memcpy(&x, p, 8); v = PyLong_FromLongLong(x); }
        if (!v) { Py_DECREF(out); PyBuffer_Release(&view); return NULL; }
        PyList_SET_ITEM(out, i, v);
    }
    PyBuffer_Release(&view);
    return out;
}
