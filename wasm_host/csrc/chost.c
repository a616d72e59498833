/* wasm_host._chost: the compiled host for the per-request path (see wasm_host/compiled.py).
 *
 * One request's guest entries (alloc, handle) and the WASI-NN host functions they reach (init_execution_context,
 * set_input, compute, get_output, get_output_dims) run here, with the GIL released. Everything else (loading
 * graphs, poll_oneoff, instantiation, the signature) stays in Python: a guest's call to one of those is a
 * ctypes callback, which takes the GIL for itself.
 *
 * Nothing is linked against wasmtime or onnxruntime: Python hands over the addresses of the few wasmtime
 * functions used and of onnxruntime's OrtGetApiBase, and the declarations below are only the parts of the two
 * C APIs this file calls, written from their documentation. The OrtApi is a table of function pointers; the
 * positions used are listed in ORT_* below (stable: onnxruntime only appends to the table).
 *
 * Every check, errno and message matches wasm_host/wasi_nn.py, which is the reference: the test suite runs the
 * same guests through both and compares answers and errors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pack.h"

/* ---- wasmtime: opaque handles and the calls used ------------------------------------------------------- */
typedef struct wt_context wt_context;
typedef struct wt_caller wt_caller;
typedef struct wt_error wt_error;
typedef struct wt_trap wt_trap;
typedef struct wt_func wt_func;
typedef struct wt_memory wt_memory;
/* wasmtime_val_raw_t: a 16-byte union; i32 and i64 values sit at its first byte (little-endian). */
typedef struct { uint8_t bytes[16]; } wt_raw;

typedef wt_error *(*call_unchecked_fn)(wt_context *, const wt_func *, wt_raw *, size_t, wt_trap **);
typedef uint8_t *(*memory_data_fn)(const wt_context *, const wt_memory *);
typedef size_t (*memory_size_fn)(const wt_context *, const wt_memory *);
typedef void (*set_epoch_deadline_fn)(wt_context *, uint64_t);
typedef void (*increment_epoch_fn)(void *engine);

static call_unchecked_fn wt_call;
static memory_data_fn wt_memory_data;
static memory_size_fn wt_memory_size;
static set_epoch_deadline_fn wt_set_epoch_deadline;
static increment_epoch_fn wt_increment_epoch;

static inline int32_t raw_i32(const wt_raw *r) { int32_t v; memcpy(&v, r->bytes, 4); return v; }
static inline int64_t raw_i64(const wt_raw *r) { int64_t v; memcpy(&v, r->bytes, 8); return v; }
static inline void raw_set_i32(wt_raw *r, int32_t v) { memset(r->bytes, 0, 16); memcpy(r->bytes, &v, 4); }

/* ---- onnxruntime: opaque handles and the table positions used ------------------------------------------ */
typedef struct OrtStatus OrtStatus;
typedef struct OrtEnv OrtEnv;
typedef struct OrtSession OrtSession;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtRunOptions OrtRunOptions;
typedef struct OrtValue OrtValue;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtShapeInfo OrtShapeInfo; /* OrtTensorTypeAndShapeInfo */
typedef struct {
    const void *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

enum {
    ORT_GET_ERROR_CODE = 1, ORT_GET_ERROR_MESSAGE = 2, ORT_CREATE_ENV = 3, ORT_CREATE_SESSION = 7,
    ORT_CREATE_SESSION_FROM_ARRAY = 8, ORT_RUN = 9, ORT_CREATE_SESSION_OPTIONS = 10,
    ORT_SET_LOG_SEVERITY = 22, ORT_SET_INTRA_THREADS = 24, ORT_SET_INTER_THREADS = 25,
    ORT_CREATE_RUN_OPTIONS = 39, ORT_RUN_SET_TERMINATE = 46, ORT_RUN_UNSET_TERMINATE = 47,
    ORT_CREATE_TENSOR_WITH_DATA = 49, ORT_GET_TENSOR_MUTABLE_DATA = 51, ORT_GET_ELEMENT_TYPE = 60,
    ORT_GET_DIMENSIONS_COUNT = 61, ORT_GET_DIMENSIONS = 62, ORT_GET_TYPE_AND_SHAPE = 65, ORT_GET_VALUE_TYPE = 67,
    ORT_CREATE_CPU_MEMORY_INFO = 69, ORT_RELEASE_STATUS = 93, ORT_RELEASE_SESSION = 95, ORT_RELEASE_VALUE = 96,
    ORT_RELEASE_RUN_OPTIONS = 97, ORT_RELEASE_SHAPE_INFO = 99, ORT_RELEASE_SESSION_OPTIONS = 100,
};
/* The oldest table version that has every position above (onnxruntime 1.11). */
#define ORT_TABLE_VERSION 11

static const void *const *ort;
#define ORT(idx, type) ((type)ort[idx])

typedef int (*get_error_code_fn)(const OrtStatus *);
typedef const char *(*get_error_message_fn)(const OrtStatus *);
typedef void (*release_fn)(void *);
typedef OrtStatus *(*create_env_fn)(int, const char *, OrtEnv **);
typedef OrtStatus *(*create_session_fn)(const OrtEnv *, const char *, const OrtSessionOptions *, OrtSession **);
typedef OrtStatus *(*create_session_array_fn)(const OrtEnv *, const void *, size_t, const OrtSessionOptions *,
                                              OrtSession **);
typedef OrtStatus *(*run_fn)(OrtSession *, const OrtRunOptions *, const char *const *, const OrtValue *const *,
                             size_t, const char *const *, size_t, OrtValue **);
typedef OrtStatus *(*create_options_fn)(OrtSessionOptions **);
typedef OrtStatus *(*options_int_fn)(OrtSessionOptions *, int);
typedef OrtStatus *(*create_run_options_fn)(OrtRunOptions **);
typedef OrtStatus *(*run_options_fn)(OrtRunOptions *);
typedef OrtStatus *(*create_tensor_fn)(const OrtMemoryInfo *, void *, size_t, const int64_t *, size_t, int,
                                       OrtValue **);
typedef OrtStatus *(*tensor_data_fn)(OrtValue *, void **);
typedef OrtStatus *(*element_type_fn)(const OrtShapeInfo *, int *);
typedef OrtStatus *(*dims_count_fn)(const OrtShapeInfo *, size_t *);
typedef OrtStatus *(*dims_fn)(const OrtShapeInfo *, int64_t *, size_t);
typedef OrtStatus *(*type_and_shape_fn)(const OrtValue *, OrtShapeInfo **);
typedef OrtStatus *(*value_type_fn)(const OrtValue *, int *);
typedef OrtStatus *(*cpu_memory_info_fn)(int, int, OrtMemoryInfo **);

#define ONNX_TYPE_TENSOR 1
#define ONNX_STRING 8

static OrtEnv *ort_env;
static OrtMemoryInfo *ort_cpu;

/* The message of a failed status, as onnxruntime's Python binding words the exception it raises for it. */
static const char *const ORT_CODES[] = {"OK", "FAIL", "INVALID_ARGUMENT", "NO_SUCHFILE", "NO_MODEL",
                                        "ENGINE_ERROR", "RUNTIME_EXCEPTION", "INVALID_PROTOBUF", "MODEL_LOADED",
                                        "NOT_IMPLEMENTED", "INVALID_GRAPH", "EP_FAIL"};

static void ort_release(int idx, void *p) { if (p) ORT(idx, release_fn)(p); }

/* ---- the WASI-NN values (wasm_host/wasi_nn.py) --------------------------------------------------------- */
enum { NN_SUCCESS = 0, NN_INVALID_ARGUMENT = 1, NN_BUSY = 4, NN_RUNTIME_ERROR = 5, NN_UNSUPPORTED = 6,
       NN_TOO_LARGE = 7 };
#define MAX_GRAPHS 16
#define MAX_CONTEXTS 64
#define MAX_DIMS 8
#define U32 0xFFFFFFFFull

/* WASI-NN tensor_type -> OIP name, element size, ONNX element type. */
static const struct { const char *name; int size; int onnx; } TTYPES[] = {
    {"FP16", 2, 10}, {"FP32", 4, 1}, {"FP64", 8, 11}, {"UINT8", 1, 2}, {"INT32", 4, 6}, {"INT64", 8, 7}};
#define N_TTYPES 6

/* Bytes per element of an ONNX element type as numpy holds it (a string is an 8-byte object reference);
 * 0: a type with no numpy counterpart. */
static int onnx_size(int t) {
    static const int sizes[] = {0, 4, 1, 1, 2, 2, 4, 8, 8, 1, 2, 8, 4, 8, 8, 16, 2};
    return (t >= 0 && t < (int)(sizeof sizes / sizeof sizes[0])) ? sizes[t] : 0;
}

/* ---- text: a growable buffer, and Python's spelling of lists and big integers -------------------------- */
typedef struct { char *s; size_t n, cap; } text;

static void t_vadd(text *t, const char *fmt, va_list args) {
    va_list ap;
    for (;;) {
        size_t room = t->cap - t->n;
        va_copy(ap, args);
        int w = vsnprintf(t->s ? t->s + t->n : NULL, room, fmt, ap);
        va_end(ap);
        if (w < 0) return;
        if ((size_t)w < room) { t->n += (size_t)w; return; }
        size_t cap = t->cap ? t->cap * 2 : 256;
        while (cap < t->n + (size_t)w + 1) cap *= 2;
        char *s = realloc(t->s, cap);
        if (!s) return;
        t->s = s;
        t->cap = cap;
    }
}

static void t_add(text *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    t_vadd(t, fmt, ap);
    va_end(ap);
}

static void t_dims(text *t, const uint32_t *dims, uint32_t n) {
    t_add(t, "[");
    for (uint32_t i = 0; i < n; i++) t_add(t, i ? ", %" PRIu32 : "%" PRIu32, dims[i]);
    t_add(t, "]");
}

/* size * prod(dims) in decimal, exactly (up to 8 u32 dims: beyond 64 bits, so in base 1e9 limbs). */
static void t_product(text *t, uint32_t size, const uint32_t *dims, uint32_t n) {
    uint32_t limb[12] = {size};
    int len = 1;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t carry = 0;
        for (int k = 0; k < len; k++) {
            /* limb * dim + carry < 1e9 * 2^32 + 2^64: split the dim to stay inside 64 bits. */
            uint64_t lo = (uint64_t)limb[k] * (dims[i] & 0xFFFF) + carry;
            uint64_t hi = (uint64_t)limb[k] * (dims[i] >> 16);
            /* value = lo + hi * 65536 */
            uint64_t v_lo = lo % 1000000000ull, c_lo = lo / 1000000000ull;
            uint64_t h = hi * 65536ull; /* hi < 1e9 * 65536, times 65536 < 2^64 */
            uint64_t v = v_lo + h % 1000000000ull;
            limb[k] = (uint32_t)(v % 1000000000ull);
            carry = c_lo + h / 1000000000ull + v / 1000000000ull;
        }
        while (carry) { limb[len++] = (uint32_t)(carry % 1000000000ull); carry /= 1000000000ull; }
        while (len > 1 && limb[len - 1] == 0) len--;
    }
    t_add(t, "%" PRIu32, limb[len - 1]);
    for (int k = len - 2; k >= 0; k--) t_add(t, "%09" PRIu32, limb[k]);
}

/* ---- graphs ------------------------------------------------------------------------------------------ */
typedef struct {
    char *name, *repr, *onnx_type, *shape_text;
    int ttype;          /* the WASI-NN tensor_type of its datatype, -1 when none has it */
    int rank;           /* -1: no shape declared (any accepted) */
    int64_t *shape;     /* -1: not fixed */
} in_spec;

typedef struct {
    PyObject_HEAD
    OrtSession *session;
    size_t n_in, n_out;
    in_spec *in;
    char **out_names, **out_types;
} Graph;

static void graph_dealloc(Graph *g) {
    ort_release(ORT_RELEASE_SESSION, g->session);
    for (size_t i = 0; g->in && i < g->n_in; i++) {
        free(g->in[i].name); free(g->in[i].repr); free(g->in[i].onnx_type); free(g->in[i].shape_text);
        free(g->in[i].shape);
    }
    free(g->in);
    for (size_t i = 0; g->out_names && i < g->n_out; i++) { free(g->out_names[i]); free(g->out_types[i]); }
    free(g->out_names);
    free(g->out_types);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static char *dup_str(PyObject *o) {
    const char *s = PyUnicode_AsUTF8(o);
    return s ? strdup(s) : NULL;
}

static PyObject *ort_exception(OrtStatus *st, const char *what) {
    PyErr_Format(PyExc_RuntimeError, "%s: [ONNXRuntimeError] : %d : %s", what,
                 ORT(ORT_GET_ERROR_CODE, get_error_code_fn)(st), ORT(ORT_GET_ERROR_MESSAGE, get_error_message_fn)(st));
    ort_release(ORT_RELEASE_STATUS, st);
    return NULL;
}

/* Graph(source: bytes | str, intra_op_threads, inputs, outputs): a session on the same model, with the options
 * wasm_host.onnx_backend gives its own; inputs as (name, repr, onnx_type, ttype, shape or None, shape text),
 * outputs as (name, onnx_type). */
static PyObject *graph_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *source, *inputs, *outputs;
    int threads;
    if (!PyArg_ParseTuple(args, "OiO!O!", &source, &threads, &PyList_Type, &inputs, &PyList_Type, &outputs))
        return NULL;
    if (!ort) return PyErr_Format(PyExc_RuntimeError, "the compiled host is not initialised");
    Graph *g = (Graph *)type->tp_alloc(type, 0);
    if (!g) return NULL;
    g->n_in = (size_t)PyList_GET_SIZE(inputs);
    g->n_out = (size_t)PyList_GET_SIZE(outputs);
    g->in = calloc(g->n_in ? g->n_in : 1, sizeof(in_spec));
    g->out_names = calloc(g->n_out ? g->n_out : 1, sizeof(char *));
    g->out_types = calloc(g->n_out ? g->n_out : 1, sizeof(char *));
    if (!g->in || !g->out_names || !g->out_types) { Py_DECREF(g); return PyErr_NoMemory(); }
    for (size_t i = 0; i < g->n_in; i++) {
        PyObject *name, *repr, *onnx_type, *shape, *shape_text;
        int ttype;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(inputs, i), "UUUiOU", &name, &repr, &onnx_type, &ttype, &shape,
                              &shape_text)) { Py_DECREF(g); return NULL; }
        in_spec *s = &g->in[i];
        s->name = dup_str(name); s->repr = dup_str(repr); s->onnx_type = dup_str(onnx_type);
        s->shape_text = dup_str(shape_text);
        s->ttype = ttype;
        s->rank = -1;
        if (shape != Py_None) {
            Py_ssize_t r = PyTuple_Size(shape);
            if (r < 0) { Py_DECREF(g); return NULL; }
            s->rank = (int)r;
            s->shape = calloc((size_t)r + 1, sizeof(int64_t));
            for (Py_ssize_t k = 0; k < r; k++) s->shape[k] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, k));
        }
        if (!s->name || !s->repr || !s->onnx_type || !s->shape_text || PyErr_Occurred()) { Py_DECREF(g); return NULL; }
    }
    for (size_t i = 0; i < g->n_out; i++) {
        PyObject *name, *onnx_type;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(outputs, i), "UU", &name, &onnx_type)) { Py_DECREF(g); return NULL; }
        g->out_names[i] = dup_str(name);
        g->out_types[i] = dup_str(onnx_type);
        if (!g->out_names[i] || !g->out_types[i]) { Py_DECREF(g); return NULL; }
    }
    OrtSessionOptions *opts = NULL;
    OrtStatus *st = ORT(ORT_CREATE_SESSION_OPTIONS, create_options_fn)(&opts);
    if (!st) st = ORT(ORT_SET_INTRA_THREADS, options_int_fn)(opts, threads);
    if (!st) st = ORT(ORT_SET_INTER_THREADS, options_int_fn)(opts, 1);
    if (!st) st = ORT(ORT_SET_LOG_SEVERITY, options_int_fn)(opts, 3);
    if (!st) {
        if (PyBytes_Check(source)) {
            char *data = PyBytes_AS_STRING(source);
            size_t len = (size_t)PyBytes_GET_SIZE(source);
            Py_BEGIN_ALLOW_THREADS
            st = ORT(ORT_CREATE_SESSION_FROM_ARRAY, create_session_array_fn)(ort_env, data, len, opts, &g->session);
            Py_END_ALLOW_THREADS
        } else {
            const char *path = PyUnicode_AsUTF8(source);
            if (!path) { ort_release(ORT_RELEASE_SESSION_OPTIONS, opts); Py_DECREF(g); return NULL; }
            Py_BEGIN_ALLOW_THREADS
            st = ORT(ORT_CREATE_SESSION, create_session_fn)(ort_env, path, opts, &g->session);
            Py_END_ALLOW_THREADS
        }
    }
    ort_release(ORT_RELEASE_SESSION_OPTIONS, opts);
    if (st) { Py_DECREF(g); return ort_exception(st, "creating the compiled host's session"); }
    return (PyObject *)g;
}

static PyTypeObject GraphType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "wasm_host._chost.Graph",
    .tp_basicsize = sizeof(Graph),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = graph_new,
    .tp_dealloc = (destructor)graph_dealloc,
    .tp_doc = "One model's session on onnxruntime's C API, with its inputs' and outputs' descriptions.",
};

/* ---- per-instance state ------------------------------------------------------------------------------ */
typedef struct {
    int set;
    void *buf;
    size_t cap;
    int64_t nbytes;
    OrtValue *value;
    /* The last tensor set here, as the guest described it: when the next one is described alike, its checks
     * and its OrtValue are reused and only the data is copied. */
    uint32_t ttype, ndims, dims[MAX_DIMS];
} ctx_input;

typedef struct {
    int ok;            /* a numeric tensor */
    int64_t nbytes;    /* numpy's nbytes for it (0 for a value that is not a tensor) */
    size_t ndims;
    int64_t *dims;
} out_info;

typedef struct {
    Graph *graph; /* a reference held by State.graph_refs */
    ctx_input *in;
    OrtValue **outs; /* NULL: not computed */
    out_info *info;
    int64_t out_bytes;
} Context;

typedef struct State {
    PyObject_HEAD
    wt_context *ctx;
    const wt_memory *mem;
    int64_t max_tensor_bytes, budget;
    int64_t held;
    Graph *graphs[MAX_GRAPHS];
    int n_graphs;
    PyObject *graph_refs; /* list */
    Context *contexts[MAX_CONTEXTS];
    int n_contexts;
    text error;
    int has_error;
    OrtRunOptions *run_options;
    double deadline_at;
    volatile int running, terminated, expired;
    struct State *next_running;
} State;

static __thread State *current;

/* The runs in progress, for the ticker's sweep (sweep_runs). */
static pthread_mutex_t running_lock = PTHREAD_MUTEX_INITIALIZER;
static State *running_head;

static void outputs_release(Context *c, size_t n_out) {
    if (!c->outs) return;
    for (size_t i = 0; i < n_out; i++) {
        ort_release(ORT_RELEASE_VALUE, c->outs[i]);
        free(c->info[i].dims);
    }
    free(c->outs);
    free(c->info);
    c->outs = NULL;
    c->info = NULL;
}

static void state_dealloc(State *s) {
    for (int i = 0; i < s->n_contexts; i++) {
        Context *c = s->contexts[i];
        outputs_release(c, c->graph->n_out);
        for (size_t k = 0; k < c->graph->n_in; k++) {
            ort_release(ORT_RELEASE_VALUE, c->in[k].value);
            free(c->in[k].buf);
        }
        free(c->in);
        free(c);
    }
    ort_release(ORT_RELEASE_RUN_OPTIONS, s->run_options);
    free(s->error.s);
    Py_XDECREF(s->graph_refs);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

/* State(store context address, memory address, max_tensor_bytes, nn budget) */
static PyObject *state_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    unsigned long long ctx, mem;
    long long max_tensor, budget;
    if (!PyArg_ParseTuple(args, "KKLL", &ctx, &mem, &max_tensor, &budget)) return NULL;
    if (!ort) return PyErr_Format(PyExc_RuntimeError, "the compiled host is not initialised");
    State *s = (State *)type->tp_alloc(type, 0);
    if (!s) return NULL;
    s->ctx = (wt_context *)(uintptr_t)ctx;
    s->mem = (const wt_memory *)(uintptr_t)mem;
    s->max_tensor_bytes = max_tensor;
    s->budget = budget;
    s->deadline_at = 1e300;
    s->graph_refs = PyList_New(0);
    if (!s->graph_refs) { Py_DECREF(s); return NULL; }
    OrtStatus *st = ORT(ORT_CREATE_RUN_OPTIONS, create_run_options_fn)(&s->run_options);
    if (st) { Py_DECREF(s); return ort_exception(st, "creating run options"); }
    return (PyObject *)s;
}

/* An import's failure: its errno, and its cause kept as ``last_error`` is in Python ("<import>: <cause>"). */
static int failf(State *s, const char *call, int code, const char *fmt, ...) {
    s->error.n = 0;
    t_add(&s->error, "%s: ", call);
    va_list ap;
    va_start(ap, fmt);
    t_vadd(&s->error, fmt, ap);
    va_end(ap);
    s->has_error = 1;
    return code;
}

/* The error text is built in pieces (lists, big numbers): start it, add to s->error, then finish. */
static void fail_start(State *s, const char *call) { s->error.n = 0; t_add(&s->error, "%s: ", call); }
static int fail_end(State *s, int code) { s->has_error = 1; return code; }

/* guest memory: [ptr, ptr+len) inside memory, else invalid_argument with GuestMemory's words */
static uint8_t *span(State *s, const char *call, uint32_t ptr, uint64_t len, int *err) {
    size_t size = wt_memory_size(s->ctx, s->mem);
    if ((uint64_t)ptr + len > size) {
        *err = failf(s, call, NN_INVALID_ARGUMENT, "guest range [%" PRIu32 ", %" PRIu32 "+%" PRIu64
                     ") is outside its %zu-byte memory", ptr, ptr, len, size);
        return NULL;
    }
    return wt_memory_data(s->ctx, s->mem) + ptr;
}

static int write_u32(State *s, const char *call, uint32_t ptr, uint32_t value) {
    int err = 0;
    uint8_t *p = span(s, call, ptr, 4, &err);
    if (!p) return err;
    memcpy(p, &value, 4);
    return 0;
}

static int charge(State *s, const char *call, int64_t delta) {
    if (s->held + delta > s->budget)
        return failf(s, call, NN_TOO_LARGE, "%" PRId64 " more bytes of tensors beside the %" PRId64
                     " this instance holds would pass its %" PRId64 "-byte budget (setting max_nn_memory_bytes)",
                     delta, s->held, s->budget);
    s->held += delta;
    return 0;
}

/* An onnxruntime call that cannot fail on sound input failed: runtime_error, its message kept. */
static int ort_fail(State *s, const char *call, OrtStatus *st) {
    int rc = failf(s, call, NN_RUNTIME_ERROR, "internal error: %s", ORT(ORT_GET_ERROR_MESSAGE, get_error_message_fn)(st));
    ort_release(ORT_RELEASE_STATUS, st);
    return rc;
}

static Context *context(State *s, const char *call, uint32_t handle, int *err) {
    if (handle >= (uint32_t)s->n_contexts) {
        *err = failf(s, call, NN_INVALID_ARGUMENT, "no execution context with handle %" PRIu32, handle);
        return NULL;
    }
    return s->contexts[handle];
}

/* ---- the imports ------------------------------------------------------------------------------------- */
static int nn_init_execution_context(State *s, uint32_t graph, uint32_t ctx_out) {
    const char *call = "init_execution_context";
    int err = 0;
    if (graph >= (uint32_t)s->n_graphs)
        return failf(s, call, NN_INVALID_ARGUMENT, "no graph with handle %" PRIu32, graph);
    Graph *g = s->graphs[graph];
    if (!span(s, call, ctx_out, 4, &err)) return err;
    if (s->n_contexts >= MAX_CONTEXTS)
        return failf(s, call, NN_TOO_LARGE, "an instance may create at most %d contexts", MAX_CONTEXTS);
    Context *c = calloc(1, sizeof(Context));
    if (!c) return failf(s, call, NN_RUNTIME_ERROR, "internal error: out of memory");
    c->in = calloc(g->n_in ? g->n_in : 1, sizeof(ctx_input));
    if (!c->in) { free(c); return failf(s, call, NN_RUNTIME_ERROR, "internal error: out of memory"); }
    c->graph = g;
    s->contexts[s->n_contexts++] = c;
    return write_u32(s, call, ctx_out, (uint32_t)(s->n_contexts - 1));
}

static int nn_set_input(State *s, uint32_t ctx, uint32_t index, uint32_t tensor_ptr) {
    const char *call = "set_input";
    int err = 0;
    Context *c = context(s, call, ctx, &err);
    if (!c) return err;
    const uint8_t *t = span(s, call, tensor_ptr, 20, &err);
    if (!t) return err;
    uint32_t dims_ptr, dims_len, data_ptr, data_len;
    uint8_t ttype = t[8];
    memcpy(&dims_ptr, t, 4); memcpy(&dims_len, t + 4, 4); memcpy(&data_ptr, t + 12, 4); memcpy(&data_len, t + 16, 4);
    Graph *g = c->graph;
    if (index >= g->n_in)
        return failf(s, call, NN_INVALID_ARGUMENT, "input index %" PRIu32 ": the graph has %zu", index, g->n_in);
    in_spec *want = &g->in[index];
    ctx_input *in = &c->in[index];
    uint32_t dims[MAX_DIMS];
    int cached = in->set && in->ttype == ttype && in->ndims == dims_len && dims_len <= MAX_DIMS;
    if (cached && dims_len) {
        const uint8_t *d = span(s, call, dims_ptr, 4ull * dims_len, &err);
        if (!d) return err;
        memcpy(dims, d, 4 * dims_len);
        cached = memcmp(dims, in->dims, 4 * dims_len) == 0;
    }
    cached = cached && (int64_t)data_len == in->nbytes;
    if (!cached) {
        if (ttype >= N_TTYPES)
            return failf(s, call, NN_INVALID_ARGUMENT, "input %" PRIu32 ": unknown tensor type %u", index, ttype);
        if ((int)ttype != want->ttype)
            return failf(s, call, NN_INVALID_ARGUMENT, "input %" PRIu32 " (%s) takes %s, the guest passed %s", index,
                         want->repr, want->onnx_type, TTYPES[ttype].name);
        if (dims_len > MAX_DIMS)
            return failf(s, call, NN_INVALID_ARGUMENT, "input %" PRIu32 ": %" PRIu32 " dims (at most %d)", index,
                         dims_len, MAX_DIMS);
        if (dims_len) {
            const uint8_t *d = span(s, call, dims_ptr, 4ull * dims_len, &err);
            if (!d) return err;
            memcpy(dims, d, 4 * dims_len);
        }
        if (want->rank > 0) {
            int fits = (uint32_t)want->rank == dims_len;
            for (int k = 0; fits && k < want->rank; k++)
                if (want->shape[k] != -1 && (int64_t)dims[k] != want->shape[k]) fits = 0;
            if (!fits) {
                fail_start(s, call);
                t_add(&s->error, "input %" PRIu32 " (%s) takes shape %s, the guest passed ", index, want->repr,
                      want->shape_text);
                t_dims(&s->error, dims, dims_len);
                return fail_end(s, NN_INVALID_ARGUMENT);
            }
        }
        /* size * prod(dims), saturated: anything past the limit is refused, whatever its exact value. */
        unsigned __int128 nbytes = (unsigned __int128)TTYPES[ttype].size;
        int over = 0;
        for (uint32_t k = 0; k < dims_len; k++) {
            nbytes *= dims[k];
            if (nbytes > ((unsigned __int128)1 << 64)) { over = 1; nbytes = (unsigned __int128)1 << 64; }
        }
        if (over || nbytes > (unsigned __int128)s->max_tensor_bytes) {
            fail_start(s, call);
            t_add(&s->error, "input %" PRIu32 ": ", index);
            t_product(&s->error, (uint32_t)TTYPES[ttype].size, dims, dims_len);
            t_add(&s->error, " bytes exceeds the tensor limit");
            return fail_end(s, NN_TOO_LARGE);
        }
        if ((uint64_t)data_len != (uint64_t)nbytes) {
            fail_start(s, call);
            t_add(&s->error, "input %" PRIu32 ": data_len %" PRIu32 " but dims ", index, data_len);
            t_dims(&s->error, dims, dims_len);
            t_add(&s->error, " need %" PRIu64, (uint64_t)nbytes);
            return fail_end(s, NN_INVALID_ARGUMENT);
        }
    }
    int64_t old = in->set ? in->nbytes : 0;
    if ((err = charge(s, call, (int64_t)data_len - old - c->out_bytes))) return err;
    const uint8_t *data = NULL;
    if (data_len && !(data = span(s, call, data_ptr, data_len, &err))) {
        /* Python reads the data after charging: the charge stands, as it does there. */
        return err;
    }
    /* From here the tensor is kept: drop what the context held before (as Python replaces its array). */
    in->set = 0;
    in->nbytes = 0;
    if (!cached) {
        ort_release(ORT_RELEASE_VALUE, in->value);
        in->value = NULL;
        if (in->cap < data_len || !in->buf) {
            free(in->buf);
            in->buf = malloc(data_len ? data_len : 1);
            in->cap = data_len;
            if (!in->buf) { in->cap = 0; return failf(s, call, NN_RUNTIME_ERROR, "internal error: out of memory"); }
        }
        int64_t shape[MAX_DIMS];
        for (uint32_t k = 0; k < dims_len; k++) shape[k] = dims[k];
        OrtStatus *st = ORT(ORT_CREATE_TENSOR_WITH_DATA, create_tensor_fn)(ort_cpu, in->buf, data_len, shape, dims_len,
                                                                          TTYPES[ttype].onnx, &in->value);
        if (st) return ort_fail(s, call, st);
        in->ttype = ttype;
        in->ndims = dims_len;
        memcpy(in->dims, dims, 4 * dims_len);
    }
    if (data_len) memcpy(in->buf, data, data_len);
    in->set = 1;
    in->nbytes = data_len;
    outputs_release(c, g->n_out);
    c->out_bytes = 0;
    return 0;
}

static void running_add(State *s) {
    pthread_mutex_lock(&running_lock);
    s->next_running = running_head;
    running_head = s;
    s->running = 1;
    s->terminated = 0;
    pthread_mutex_unlock(&running_lock);
}

static void running_remove(State *s) {
    pthread_mutex_lock(&running_lock);
    for (State **p = &running_head; *p; p = &(*p)->next_running)
        if (*p == s) { *p = s->next_running; break; }
    s->running = 0;
    pthread_mutex_unlock(&running_lock);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Python's str(exc).strip()[:500] of the exception its binding raises, from a failed status. */
static void add_ort_error(text *t, OrtStatus *st) {
    text msg = {0};
    int code = ORT(ORT_GET_ERROR_CODE, get_error_code_fn)(st);
    t_add(&msg, "[ONNXRuntimeError] : %d : %s : %s", code,
          (code >= 0 && code < (int)(sizeof ORT_CODES / sizeof ORT_CODES[0])) ? ORT_CODES[code] : "GENERAL ERROR",
          ORT(ORT_GET_ERROR_MESSAGE, get_error_message_fn)(st));
    size_t end = msg.n;
    while (end && strchr(" \t\n\r\x0b\x0c", msg.s[end - 1])) end--;
    /* the first 500 characters (code points) of the UTF-8 text */
    size_t i = 0, chars = 0;
    while (i < end && chars < 500) {
        unsigned char b = (unsigned char)msg.s[i];
        i += b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
        chars++;
    }
    if (i > end) i = end;
    t_add(t, "%.*s", (int)i, msg.s ? msg.s : "");
    free(msg.s);
}

static int nn_compute(State *s, uint32_t ctx) {
    const char *call = "compute";
    int err = 0;
    Context *c = context(s, call, ctx, &err);
    if (!c) return err;
    Graph *g = c->graph;
    for (size_t i = 0; i < g->n_in; i++) {
        if (!c->in[i].set) {
            fail_start(s, call);
            t_add(&s->error, "compute before set_input of [");
            int first = 1;
            for (size_t k = 0; k < g->n_in; k++)
                if (!c->in[k].set) { t_add(&s->error, first ? "%s" : ", %s", g->in[k].repr); first = 0; }
            t_add(&s->error, "]");
            return fail_end(s, NN_UNSUPPORTED);
        }
    }
    const char *in_names[16], *out_names[16];
    const OrtValue *in_values[16];
    /* A graph with more inputs or outputs than the usual handful gets its arrays from the heap. */
    const char **in_n = g->n_in <= 16 ? in_names : malloc(g->n_in * sizeof(char *));
    const OrtValue **ins = g->n_in <= 16 ? in_values : malloc(g->n_in * sizeof(OrtValue *));
    const char **out_n = g->n_out <= 16 ? out_names : malloc(g->n_out * sizeof(char *));
    OrtValue **outs = calloc(g->n_out ? g->n_out : 1, sizeof(OrtValue *));
    out_info *info = calloc(g->n_out ? g->n_out : 1, sizeof(out_info));
    if (!in_n || !ins || !out_n || !outs || !info) {
        err = failf(s, call, NN_RUNTIME_ERROR, "internal error: out of memory");
        goto done;
    }
    for (size_t i = 0; i < g->n_in; i++) { in_n[i] = g->in[i].name; ins[i] = c->in[i].value; }
    for (size_t i = 0; i < g->n_out; i++) out_n[i] = g->out_names[i];
    ORT(ORT_RUN_UNSET_TERMINATE, run_options_fn)(s->run_options);
    running_add(s);
    OrtStatus *st = ORT(ORT_RUN, run_fn)(g->session, s->run_options, in_n, ins, g->n_in, out_n, g->n_out, outs);
    running_remove(s);
    if (st) {
        for (size_t i = 0; i < g->n_out; i++) ort_release(ORT_RELEASE_VALUE, outs[i]);
        if (s->expired) {
            s->expired = 2;
            err = failf(s, call, NN_RUNTIME_ERROR, "onnxruntime was stopped at the deadline");
        } else {
            fail_start(s, call);
            t_add(&s->error, "onnxruntime: ");
            add_ort_error(&s->error, st);
            err = fail_end(s, NN_RUNTIME_ERROR);
        }
        ort_release(ORT_RELEASE_STATUS, st);
        goto done;
    }
    int64_t out_bytes = 0;
    for (size_t i = 0; i < g->n_out; i++) {
        int vt = 0;
        out_info *o = &info[i];
        OrtStatus *e = ORT(ORT_GET_VALUE_TYPE, value_type_fn)(outs[i], &vt);
        if (e) { ort_release(ORT_RELEASE_STATUS, e); continue; }
        if (vt != ONNX_TYPE_TENSOR) continue;
        OrtShapeInfo *si = NULL;
        if ((e = ORT(ORT_GET_TYPE_AND_SHAPE, type_and_shape_fn)(outs[i], &si))) { ort_release(ORT_RELEASE_STATUS, e); continue; }
        int et = 0;
        size_t nd = 0;
        e = ORT(ORT_GET_ELEMENT_TYPE, element_type_fn)(si, &et);
        if (!e) e = ORT(ORT_GET_DIMENSIONS_COUNT, dims_count_fn)(si, &nd);
        if (!e) {
            o->dims = calloc(nd + 1, sizeof(int64_t));
            o->ndims = nd;
            if (o->dims) e = ORT(ORT_GET_DIMENSIONS, dims_fn)(si, o->dims, nd);
        }
        ort_release(ORT_RELEASE_SHAPE_INFO, si);
        if (e || !o->dims) { ort_release(ORT_RELEASE_STATUS, e); continue; }
        int64_t numel = 1;
        for (size_t k = 0; k < nd; k++) numel *= o->dims[k];
        o->nbytes = numel * onnx_size(et);
        o->ok = et != ONNX_STRING && onnx_size(et) > 0;
        out_bytes += o->nbytes;
    }
    int64_t previous = c->out_bytes;
    outputs_release(c, g->n_out);
    c->out_bytes = 0;
    s->held -= previous;
    c->outs = outs; /* kept, or released through the usual path when they do not fit */
    c->info = info;
    outs = NULL;
    info = NULL;
    if ((err = charge(s, call, out_bytes))) outputs_release(c, g->n_out);
    else c->out_bytes = out_bytes;
done:
    free(outs);
    free(info);
    if (in_n != in_names) free((void *)in_n);
    if (ins != in_values) free((void *)ins);
    if (out_n != out_names) free((void *)out_n);
    return err;
}

/* Output ``index`` of a computed context, as a numeric tensor (what both output imports read), after checking
 * the guest's two buffers as wasm_host.wasi_nn does: the u32 it gets a count in, then the whole buffer it
 * claims (``dst``), however much of it the output fills. */
static out_info *output(State *s, const char *call, uint32_t ctx, uint32_t index, uint32_t count_ptr,
                        uint32_t buf_ptr, uint64_t buf_len, Context **cp, uint8_t **dst, int *err) {
    Context *c = context(s, call, ctx, err);
    if (!c) return NULL;
    if (!c->outs) { *err = failf(s, call, NN_UNSUPPORTED, "%s before compute", call); return NULL; }
    if (index >= c->graph->n_out) {
        *err = failf(s, call, NN_INVALID_ARGUMENT, "output index %" PRIu32 ": the graph has %zu", index,
                     c->graph->n_out);
        return NULL;
    }
    out_info *o = &c->info[index];
    if (!o->ok) {
        *err = failf(s, call, NN_UNSUPPORTED, "output %" PRIu32 " (%s) is not a numeric tensor", index,
                     c->graph->out_types[index]);
        return NULL;
    }
    if (!span(s, call, count_ptr, 4, err) || !(*dst = span(s, call, buf_ptr, buf_len, err))) return NULL;
    *cp = c;
    return o;
}

static int nn_get_output(State *s, uint32_t ctx, uint32_t index, uint32_t out_ptr, uint32_t out_max,
                         uint32_t written_out) {
    const char *call = "get_output";
    int err = 0;
    Context *c = NULL;
    uint8_t *dst = NULL;
    out_info *o = output(s, call, ctx, index, written_out, out_ptr, out_max, &c, &dst, &err);
    if (!o) return err;
    if (o->nbytes > s->max_tensor_bytes)
        return failf(s, call, NN_TOO_LARGE, "output %" PRIu32 ": %" PRId64 " bytes exceeds the tensor limit", index,
                     o->nbytes);
    if (o->nbytes > (int64_t)out_max)
        return failf(s, call, NN_TOO_LARGE, "output %" PRIu32 " has %" PRId64 " bytes, the buffer %" PRIu32, index,
                     o->nbytes, out_max);
    if (o->nbytes) {
        void *src = NULL;
        OrtStatus *st = ORT(ORT_GET_TENSOR_MUTABLE_DATA, tensor_data_fn)(c->outs[index], &src);
        if (st) return ort_fail(s, call, st);
        memcpy(dst, src, (size_t)o->nbytes);
    }
    return write_u32(s, call, written_out, (uint32_t)o->nbytes);
}

static int nn_get_output_dims(State *s, uint32_t ctx, uint32_t index, uint32_t dims_ptr, uint32_t dims_max,
                              uint32_t ndim_out) {
    const char *call = "get_output_dims";
    int err = 0;
    Context *c = NULL;
    uint8_t *dst = NULL;
    out_info *o = output(s, call, ctx, index, ndim_out, dims_ptr, 4ull * dims_max, &c, &dst, &err);
    if (!o) return err;
    if ((err = write_u32(s, call, ndim_out, (uint32_t)o->ndims))) return err;
    if (o->ndims > dims_max)
        return failf(s, call, NN_TOO_LARGE, "output %" PRIu32 " has %zu dims, the buffer %" PRIu32, index, o->ndims,
                     dims_max);
    for (size_t k = 0; k < o->ndims; k++)
        if ((uint64_t)o->dims[k] >= U32)
            return failf(s, call, NN_TOO_LARGE, "output %" PRIu32 ": dimension %" PRId64 " does not fit a u32", index,
                         o->dims[k]);
    for (size_t k = 0; k < o->ndims; k++) {
        uint32_t d = (uint32_t)o->dims[k];
        memcpy(dst + 4 * k, &d, 4);
    }
    return 0;
}

/* ---- the callbacks wasmtime calls (wasmtime_func_unchecked_callback_t) ------------------------------- */
static inline uint32_t arg(const wt_raw *a, int k) { return (uint32_t)raw_i32(&a[k]); }

#define CALLBACK(NAME, BODY)                                                                        \
    static wt_trap *cb_##NAME(void *env, wt_caller *caller, wt_raw *a, size_t n) {                  \
        (void)env; (void)caller; (void)n;                                                           \
        State *s = current;                                                                         \
        raw_set_i32(&a[0], s ? (BODY) : NN_BUSY);                                                   \
        return NULL;                                                                                \
    }
CALLBACK(init_execution_context, nn_init_execution_context(s, arg(a, 0), arg(a, 1)))
CALLBACK(set_input, nn_set_input(s, arg(a, 0), arg(a, 1), arg(a, 2)))
CALLBACK(compute, nn_compute(s, arg(a, 0)))
CALLBACK(get_output, nn_get_output(s, arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4)))
CALLBACK(get_output_dims, nn_get_output_dims(s, arg(a, 0), arg(a, 1), arg(a, 2), arg(a, 3), arg(a, 4)))

/* ---- State's Python methods -------------------------------------------------------------------------- */
static PyObject *state_add_graph(State *s, PyObject *g) {
    if (!PyObject_TypeCheck(g, &GraphType)) return PyErr_Format(PyExc_TypeError, "a Graph is expected");
    if (s->n_graphs >= MAX_GRAPHS) return PyErr_Format(PyExc_ValueError, "graph table full");
    if (PyList_Append(s->graph_refs, g) < 0) return NULL;
    s->graphs[s->n_graphs++] = (Graph *)g;
    Py_RETURN_NONE;
}

static PyObject *state_take_error(State *s, PyObject *unused) {
    if (!s->has_error) Py_RETURN_NONE;
    s->has_error = 0;
    return PyUnicode_DecodeUTF8(s->error.s ? s->error.s : "", (Py_ssize_t)s->error.n, "replace");
}

static PyObject *state_peek_error(State *s, PyObject *unused) {
    if (!s->has_error) Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(s->error.s ? s->error.s : "", (Py_ssize_t)s->error.n, "replace");
}

static PyObject *state_set_error(State *s, PyObject *msg) {
    if (msg == Py_None) { s->has_error = 0; Py_RETURN_NONE; }
    Py_ssize_t n;
    const char *m = PyUnicode_AsUTF8AndSize(msg, &n);
    if (!m) return NULL;
    s->error.n = 0;
    t_add(&s->error, "%.*s", (int)n, m);
    s->has_error = 1;
    Py_RETURN_NONE;
}

/* arm(at): a new deadline (time.monotonic seconds) for the calls until the next arm. */
static PyObject *state_arm(State *s, PyObject *at) {
    double v = PyFloat_AsDouble(at);
    if (v == -1.0 && PyErr_Occurred()) return NULL;
    s->deadline_at = v;
    s->expired = 0;
    Py_RETURN_NONE;
}

static PyObject *state_expired(State *s, void *unused) { return PyLong_FromLong(s->expired); }
static PyObject *state_held(State *s, void *unused) { return PyLong_FromLongLong(s->held); }
static PyObject *state_n_contexts(State *s, void *unused) { return PyLong_FromLong(s->n_contexts); }

static PyMethodDef state_methods[] = {
    {"add_graph", (PyCFunction)state_add_graph, METH_O, "Append a graph to the handle table."},
    {"take_error", (PyCFunction)state_take_error, METH_NOARGS, "The last import failure's cause, forgotten."},
    {"peek_error", (PyCFunction)state_peek_error, METH_NOARGS, "The last import failure's cause, kept."},
    {"set_error", (PyCFunction)state_set_error, METH_O, "Record (or clear, with None) an import failure."},
    {"arm", (PyCFunction)state_arm, METH_O, "Start a deadline at this time.monotonic() value."},
    {NULL}};

static PyGetSetDef state_getset[] = {
    {"expired", (getter)state_expired, NULL, "0; 1: the watchdog stopped a run; 2: and onnxruntime stopped", NULL},
    {"held_bytes", (getter)state_held, NULL, "bytes of tensors this instance's contexts hold", NULL},
    {"n_contexts", (getter)state_n_contexts, NULL, "execution contexts created", NULL},
    {NULL}};

static PyTypeObject StateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "wasm_host._chost.State",
    .tp_basicsize = sizeof(State),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = state_new,
    .tp_dealloc = (destructor)state_dealloc,
    .tp_methods = state_methods,
    .tp_getset = state_getset,
    .tp_doc = "The WASI-NN state of one guest instance on the compiled path.",
};

/* ---- module functions -------------------------------------------------------------------------------- */
static PyObject *mod_init(PyObject *m, PyObject *args) {
    unsigned long long api_base, call, data, size, epoch, increment;
    if (!PyArg_ParseTuple(args, "KKKKKK", &api_base, &call, &data, &size, &epoch, &increment)) return NULL;
    if (ort) Py_RETURN_NONE;
    const OrtApiBase *base = (const OrtApiBase *)(uintptr_t)api_base;
    const void *const *api = base->GetApi(ORT_TABLE_VERSION);
    if (!api) return PyErr_Format(PyExc_RuntimeError, "onnxruntime %s offers no API table version %d",
                                  base->GetVersionString(), ORT_TABLE_VERSION);
    ort = api;
    OrtStatus *st = ORT(ORT_CREATE_ENV, create_env_fn)(3, "wasmgate", &ort_env);
    if (!st) st = ORT(ORT_CREATE_CPU_MEMORY_INFO, cpu_memory_info_fn)(0 /* device allocator */, 0, &ort_cpu);
    if (st) { ort = NULL; return ort_exception(st, "starting onnxruntime"); }
    wt_call = (call_unchecked_fn)(uintptr_t)call;
    wt_memory_data = (memory_data_fn)(uintptr_t)data;
    wt_memory_size = (memory_size_fn)(uintptr_t)size;
    wt_set_epoch_deadline = (set_epoch_deadline_fn)(uintptr_t)epoch;
    wt_increment_epoch = (increment_epoch_fn)(uintptr_t)increment;
    return PyUnicode_FromString(base->GetVersionString());
}

static PyObject *mod_callbacks(PyObject *m, PyObject *unused) {
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K}", "init_execution_context",
                         (unsigned long long)(uintptr_t)cb_init_execution_context, "set_input",
                         (unsigned long long)(uintptr_t)cb_set_input, "compute",
                         (unsigned long long)(uintptr_t)cb_compute, "get_output",
                         (unsigned long long)(uintptr_t)cb_get_output, "get_output_dims",
                         (unsigned long long)(uintptr_t)cb_get_output_dims);
}

static PyObject *mod_bind(PyObject *m, PyObject *state) {
    if (state != Py_None && !PyObject_TypeCheck(state, &StateType))
        return PyErr_Format(PyExc_TypeError, "a State or None is expected");
    current = state == Py_None ? NULL : (State *)state;
    Py_RETURN_NONE;
}

/* ---- the ticker: epochs and deadlines without the GIL ---------------------------------------------------
 * One native thread bumps each registered engine's epoch every tick (its own tick_ms) and stops the compiled
 * runs past their deadline (sweep_runs). A Python thread doing this would wake hundreds of times a second and
 * take the GIL each time, from the event loop serving requests; this one never touches Python. A registered
 * engine's Python object is held (a reference taken with the GIL) until tick_stop, so it cannot be freed while
 * the thread uses it. */
#define MAX_ENGINES 64
typedef struct {
    void *engine;
    PyObject *owner;
    double interval, due;
} Ticked;
static pthread_mutex_t tick_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t tick_cond = PTHREAD_COND_INITIALIZER;
static Ticked ticked[MAX_ENGINES];
static int n_ticked, tick_thread_started;

static void sweep_runs(void) {
    double now = now_s();
    pthread_mutex_lock(&running_lock);
    for (State *s = running_head; s; s = s->next_running) {
        if (s->deadline_at <= now && !s->terminated) {
            s->terminated = 1;
            s->expired = 1;
            OrtStatus *st = ORT(ORT_RUN_SET_TERMINATE, run_options_fn)(s->run_options);
            ort_release(ORT_RELEASE_STATUS, st);
        }
    }
    pthread_mutex_unlock(&running_lock);
}

static struct timespec abs_time(double t) {
    /* now_s() is CLOCK_MONOTONIC; the condition variable waits on the same clock (tick_thread sets it). */
    struct timespec ts;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    return ts;
}

static void *tick_thread(void *unused) {
    pthread_mutex_lock(&tick_lock);
    for (;;) {
        while (n_ticked == 0) pthread_cond_wait(&tick_cond, &tick_lock);
        double now = now_s(), next = now + 3600;
        for (int i = 0; i < n_ticked; i++) {
            if (ticked[i].due <= now) {
                wt_increment_epoch(ticked[i].engine);
                ticked[i].due += ticked[i].interval;
                if (ticked[i].due <= now) ticked[i].due = now + ticked[i].interval; /* fell behind: no burst */
            }
            if (ticked[i].due < next) next = ticked[i].due;
        }
        pthread_mutex_unlock(&tick_lock);
        if (ort) sweep_runs();
        pthread_mutex_lock(&tick_lock);
        struct timespec until = abs_time(next);
        pthread_cond_timedwait(&tick_cond, &tick_lock, &until);
    }
    return NULL;
}

/* In a child forked while the ticker ran, the thread is gone and the locks may be held by it: start over with
 * nothing registered (the parent's engines are not this process's to tick), and a fresh thread at the first
 * tick_start. */
static void tick_after_fork(void) {
    pthread_mutex_init(&tick_lock, NULL);
    pthread_mutex_init(&running_lock, NULL);
    pthread_cond_init(&tick_cond, NULL);
    n_ticked = 0;
    tick_thread_started = 0;
    running_head = NULL;
}

/* tick_start(engine, address, tick_ms): bump the engine at ``address`` (wasm_engine_t*, whose Python object is
 * ``engine``) every tick_ms from now on. */
static PyObject *mod_tick_start(PyObject *m, PyObject *args) {
    PyObject *owner;
    unsigned long long address;
    double tick_ms;
    if (!PyArg_ParseTuple(args, "OKd", &owner, &address, &tick_ms)) return NULL;
    if (!wt_increment_epoch) return PyErr_Format(PyExc_RuntimeError, "the compiled host is not initialised");
    if (!address || !(tick_ms > 0)) return PyErr_Format(PyExc_ValueError, "an engine and a positive tick");
    pthread_mutex_lock(&tick_lock);
    for (int i = 0; i < n_ticked; i++)
        if (ticked[i].engine == (void *)(uintptr_t)address) {
            pthread_mutex_unlock(&tick_lock);
            Py_RETURN_NONE;
        }
    if (n_ticked == MAX_ENGINES) {
        pthread_mutex_unlock(&tick_lock);
        return PyErr_Format(PyExc_RuntimeError, "more than %d engines tick at once", MAX_ENGINES);
    }
    if (!tick_thread_started) {
        static int at_fork_set;
        if (!at_fork_set) at_fork_set = pthread_atfork(NULL, NULL, tick_after_fork) == 0;
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_destroy(&tick_cond);
        pthread_cond_init(&tick_cond, &attr);
        pthread_condattr_destroy(&attr);
        pthread_t thread;
        if (pthread_create(&thread, NULL, tick_thread, NULL) != 0) {
            pthread_mutex_unlock(&tick_lock);
            return PyErr_Format(PyExc_RuntimeError, "cannot start the ticker thread");
        }
        pthread_detach(thread);
        tick_thread_started = 1;
    }
    Py_INCREF(owner);
    double interval = tick_ms / 1000.0;
    ticked[n_ticked++] = (Ticked){(void *)(uintptr_t)address, owner, interval, now_s() + interval};
    pthread_cond_signal(&tick_cond);
    pthread_mutex_unlock(&tick_lock);
    Py_RETURN_NONE;
}

/* tick_stop(address): stop bumping that engine; returns whether it was ticking. */
static PyObject *mod_tick_stop(PyObject *m, PyObject *arg) {
    unsigned long long address = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    PyObject *owner = NULL;
    pthread_mutex_lock(&tick_lock);
    for (int i = 0; i < n_ticked; i++)
        if (ticked[i].engine == (void *)(uintptr_t)address) {
            owner = ticked[i].owner;
            ticked[i] = ticked[--n_ticked];
            break;
        }
    pthread_mutex_unlock(&tick_lock);
    if (!owner) Py_RETURN_FALSE;
    Py_DECREF(owner); /* after the unlock: the thread no longer sees this engine */
    Py_RETURN_TRUE;
}

/* request(state, alloc, handle, data, ticks) -> (code, value, body): one request's two guest entries with the
 * GIL released, under an epoch deadline of ``ticks`` (and the state's armed deadline for its host calls).
 * code 0: value is handle's i64 result, and body the result buffer's bytes (None when it lies outside memory:
 * the caller words that error); 1/2: alloc trapped / failed (value: the wasm_trap_t / wasmtime_error_t address,
 * whose ownership passes to the caller); 3/4: the same for handle; 5: alloc returned a pointer the request
 * cannot be written at (value: the pointer; the caller words the error). */
static PyObject *mod_request(PyObject *m, PyObject *args) {
    State *s;
    unsigned long long alloc, handle, ticks;
    Py_buffer req;
    double at;
    if (!PyArg_ParseTuple(args, "O!KKy*Kd", &StateType, &s, &alloc, &handle, &req, &ticks, &at)) return NULL;
    /* A new request: its deadline for the host calls (as state.arm), and no failure left from the one before
     * (as state.take_error), here rather than in two more calls from Python. */
    s->deadline_at = at;
    s->expired = 0;
    s->has_error = 0;
    int code = 0;
    int64_t value = 0;
    State *previous = current;
    Py_BEGIN_ALLOW_THREADS
    current = s;
    wt_set_epoch_deadline(s->ctx, ticks);
    wt_raw raw[2];
    wt_trap *trap = NULL;
    raw_set_i32(&raw[0], (int32_t)req.len);
    wt_error *error = wt_call(s->ctx, (const wt_func *)(uintptr_t)alloc, raw, 1, &trap);
    if (error || trap) {
        code = error ? 2 : 1;
        value = (int64_t)(uintptr_t)(error ? (void *)error : (void *)trap);
    } else {
        uint32_t ptr = (uint32_t)raw_i32(&raw[0]);
        size_t size = wt_memory_size(s->ctx, s->mem);
        if (ptr == 0 || (ptr & 7) || (uint64_t)ptr + (uint64_t)req.len > size) {
            code = 5;
            value = ptr;
        } else {
            memcpy(wt_memory_data(s->ctx, s->mem) + ptr, req.buf, (size_t)req.len);
            raw_set_i32(&raw[0], (int32_t)ptr);
            raw_set_i32(&raw[1], (int32_t)req.len);
            error = wt_call(s->ctx, (const wt_func *)(uintptr_t)handle, raw, 2, &trap);
            if (error || trap) {
                code = error ? 4 : 3;
                value = (int64_t)(uintptr_t)(error ? (void *)error : (void *)trap);
            } else {
                value = raw_i64(&raw[0]);
            }
        }
    }
    current = previous;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&req);
    if (code != 0) return Py_BuildValue("iLOi", code, (long long)value, Py_None, s->expired);
    /* The result buffer, as wasm_host.abi.unpack_result reads the i64: pointer, then a 30-bit length. */
    uint64_t r = (uint64_t)value;
    uint64_t out_ptr = r & 0xFFFFFFFFull, out_len = (r >> 32) & 0x3FFFFFFFull;
    if (out_ptr + out_len > wt_memory_size(s->ctx, s->mem))
        return Py_BuildValue("iLOi", 0, (long long)value, Py_None, s->expired);
    PyObject *body = PyBytes_FromStringAndSize((const char *)wt_memory_data(s->ctx, s->mem) + out_ptr,
                                               (Py_ssize_t)out_len);
    if (!body) return NULL;
    return Py_BuildValue("iLNi", 0, (long long)value, body, s->expired);
}

/* ---- the response, parsed where it is regular ---------------------------------------------------------- */
/* Set by configure_response (wasm_host.compiled, from wasm_host.abi and wasm_host.tensors): the magic, the most
 * dims, and per dtype code its name and element size (0: variable, left to Python). */
static uint32_t resp_magic;
static uint32_t resp_max_dims;
static PyObject *dtype_names[64];
static int dtype_sizes[64];
static int n_dtypes;

static PyObject *mod_configure_response(PyObject *m, PyObject *args) {
    unsigned int magic, max_dims;
    PyObject *dtypes;
    if (!PyArg_ParseTuple(args, "IIO!", &magic, &max_dims, &PyTuple_Type, &dtypes)) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(dtypes);
    if (n > 64 || max_dims > 64) return PyErr_Format(PyExc_ValueError, "too many dtypes or dims");
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name;
        int size;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(dtypes, i), "Ui", &name, &size)) return NULL;
        Py_INCREF(name);
        Py_XSETREF(dtype_names[i], name);
        dtype_sizes[i] = size;
    }
    n_dtypes = (int)n;
    resp_magic = magic;
    resp_max_dims = max_dims;
    Py_RETURN_NONE;
}

static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t pad8(uint64_t n) { return (n + 7) & ~7ull; }

/* parse(body) -> [(name, datatype, shape, data)] for a response wasm_host.abi.decode_response would accept with
 * no work beyond this; None for anything else (a malformed buffer, BYTES, an unknown dim to resolve that does
 * not fit), which the caller hands to decode_response for its verdict and its words. */
static PyObject *mod_parse(PyObject *m, PyObject *arg) {
    if (!PyBytes_Check(arg)) return PyErr_Format(PyExc_TypeError, "bytes expected");
    const uint8_t *buf = (const uint8_t *)PyBytes_AS_STRING(arg);
    uint64_t end = (uint64_t)PyBytes_GET_SIZE(arg);
    if (!n_dtypes || end < 16 || rd32(buf) != resp_magic || rd32(buf + 8) != 0) Py_RETURN_NONE;
    uint32_t count = rd32(buf + 4);
    if (count > end / 16) Py_RETURN_NONE;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    uint64_t pos = 16;
    for (uint32_t i = 0; i < count; i++) {
        if (end - pos < 16) goto irregular;
        uint32_t name_len = rd32(buf + pos), code = rd32(buf + pos + 4), ndim = rd32(buf + pos + 8);
        uint32_t data_len = rd32(buf + pos + 12);
        if (ndim > resp_max_dims || code >= (uint32_t)n_dtypes || dtype_sizes[code] <= 0) goto irregular;
        pos += 16;
        uint64_t dims_end = pos + 4ull * ndim, name_at = pos + pad8(4ull * ndim);
        uint64_t data_at = name_at + pad8(name_len), next_at = data_at + pad8(data_len);
        if (dims_end > end || data_at + data_len > end) goto irregular;
        int size = dtype_sizes[code];
        if (data_len % (uint32_t)size) goto irregular;
        uint64_t numel = data_len / (uint32_t)size, known = 1;
        int unknown = -1;
        uint32_t dims[64];
        for (uint32_t k = 0; k < ndim; k++) {
            dims[k] = rd32(buf + pos + 4ull * k);
            if (dims[k] == 0xFFFFFFFFu) {
                if (unknown >= 0) goto irregular;
                unknown = (int)k;
            } else {
                /* past 2^64 it cannot equal a count of bytes in memory: decode_response refuses it */
                if (dims[k] && known > UINT64_MAX / dims[k]) goto irregular;
                known *= dims[k];
            }
        }
        PyObject *shape = PyTuple_New(ndim);
        if (!shape) goto error;
        if (unknown >= 0) {
            if (known == 0 || numel % known) { Py_DECREF(shape); goto irregular; }
        } else if (known != numel) { Py_DECREF(shape); goto irregular; }
        for (uint32_t k = 0; k < ndim; k++) {
            uint64_t d = (int)k == unknown ? numel / known : dims[k];
            PyObject *v = PyLong_FromUnsignedLongLong(d);
            if (!v) { Py_DECREF(shape); goto error; }
            PyTuple_SET_ITEM(shape, k, v);
        }
        PyObject *name = PyUnicode_DecodeUTF8((const char *)buf + name_at, name_len, "strict");
        if (!name) { PyErr_Clear(); Py_DECREF(shape); goto irregular; }
        PyObject *data = PyBytes_FromStringAndSize((const char *)buf + data_at, data_len);
        PyObject *item = data ? PyTuple_Pack(4, name, dtype_names[code], shape, data) : NULL;
        Py_DECREF(name); Py_DECREF(shape); Py_XDECREF(data);
        if (!item || PyList_Append(out, item) < 0) { Py_XDECREF(item); goto error; }
        Py_DECREF(item);
        pos = next_at;
    }
    return out;
irregular:
    Py_DECREF(out);
    Py_RETURN_NONE;
error:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef mod_methods[] = {
    {"init", mod_init, METH_VARARGS,
     "init(OrtGetApiBase's result, wasmtime_func_call_unchecked, wasmtime_memory_data, wasmtime_memory_data_size, "
     "wasmtime_context_set_epoch_deadline, wasmtime_engine_increment_epoch)"},
    {"callbacks", mod_callbacks, METH_NOARGS, "The WASI-NN imports implemented here: name -> callback address."},
    {"bind", mod_bind, METH_O, "Route this thread's WASI-NN calls to a State (None: to nothing)."},
    {"tick_start", mod_tick_start, METH_VARARGS, "Bump an engine's epoch every tick, and stop runs past their deadline."},
    {"tick_stop", mod_tick_stop, METH_O, "Stop bumping an engine's epoch."},
    {"request", mod_request, METH_VARARGS,
     "request(state, alloc, handle, request, ticks, deadline_at) -> (code, value, result or None, expired): one "
     "request's alloc and handle, with the GIL released."},
    {"configure_response", mod_configure_response, METH_VARARGS, "The response format: magic, most dims, dtypes."},
    {"parse", mod_parse, METH_O, "A regular response's tensors as tuples; None: leave it to decode_response."},
    {"pack", chost_pack, METH_VARARGS, "A JSON tensor's numbers as its bytes; None: leave it to numpy (pack.c)."},
    {"unpack", chost_unpack, METH_VARARGS, "A tensor's bytes as a list of numbers; None: leave it to numpy (pack.c)."},
    {NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "wasm_host._chost",
                                    "The compiled host for the per-request path (see wasm_host/compiled.py).", -1,
                                    mod_methods};

PyMODINIT_FUNC PyInit__chost(void) {
    if (PyType_Ready(&GraphType) < 0 || PyType_Ready(&StateType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    Py_INCREF(&GraphType);
    Py_INCREF(&StateType);
    if (PyModule_AddObject(m, "Graph", (PyObject *)&GraphType) < 0 ||
        PyModule_AddObject(m, "State", (PyObject *)&StateType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
