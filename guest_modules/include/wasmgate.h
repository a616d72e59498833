/*
 * wasmgate.h - the C SDK for wasmgate functions (single header, C11, wasm32-wasi only).
 *
 * A wasmgate function is a WASI preview 1 reactor module that implements the ABI in guest_modules/ABI.md:
 * the host calls the exported `alloc(len)`, writes a "WGT1" request there, calls `handle(ptr, len)`, and
 * reads the packed i64 result. This header implements all of that; a function only writes `wg_handle`:
 *
 *     #define WASMGATE_MAIN            // in exactly one translation unit, before the include
 *     #include "wasmgate.h"
 *
 *     WG_SIGNATURE("{\"inputs\":[...],\"outputs\":[...]}")   // optional
 *
 *     wg_result wg_handle(const wg_request *req, wg_response *resp) {
 *         const wg_tensor *x = wg_request_input(req, "x");
 *         if (!x || x->dtype != WG_FP32) return wg_invalid("expected an FP32 input \"x\"");
 *         float *y = wg_response_reserve(resp, "y", WG_FP32, x->ndim, x->dims, x->data_len);
 *         if (!y) return wg_failed("out of memory");
 *         ... fill y ...
 *         return wg_response_finish(resp);
 *     }
 *
 * Build (see guest_modules/build.py):
 *     python -m ziglang cc -target wasm32-wasi -O2 -mexec-model=reactor -Wl,-z,stack-size=65536 -I include f.c
 *     clang-14 --target=wasm32-wasi --sysroot=/usr -O2 -mexec-model=reactor -Wl,-z,stack-size=65536 ...
 *
 * API at a glance (all static inline unless noted):
 *   request   wg_request_input(req, name), wg_request_output(req, name), wg_tensor_name_is(t, name),
 *             wg_tensor_numel(t), wg_dims_numel(ndim, dims), wg_dtype_size(code), wg_dtype_name(code),
 *             wg_parse_request(buf, len, req) (the SDK's `handle` calls it for you)
 *   response  wg_response_reserve(resp, name, dtype, ndim, dims, data_len) -> void *data,
 *             wg_response_add(resp, name, dtype, ndim, dims, data, data_len) -> 0 / -1,
 *             wg_response_resize_last(resp, data_len) -> void *data, wg_response_drop_last(resp),
 *             wg_response_data(resp, index) -> void *data, wg_response_finish(resp) -> wg_result,
 *             wg_response_add_nn_output(resp, ctx, index, name, dtype, ndim, dims, size_hint, &written),
 *             wg_response_add_nn_output_actual(resp, ctx, index, name, dtype, &written) (the output's own dims)
 *   status    wg_invalid(msg) (status 1, HTTP 400), wg_failed(msg) (status 2, HTTP 500),
 *             wg_nn_failed(call, errno) (status 2), wg_status(status, buf, len);
 *             wg_msg_init / wg_msg_str / wg_msg_strn / wg_msg_u64 / wg_msg_i64 build a message without printf
 *   wasi-nn   the six imports wg_nn_load, wg_nn_load_by_name, wg_nn_init_execution_context, wg_nn_set_input,
 *             wg_nn_compute, wg_nn_get_output (extern), and wasmgate's extension wg_nn_get_output_dims (extern,
 *             import module "wasmgate_nn"); wg_nn_load_by_name_str(name, &graph),
 *             wg_nn_set_input_tensor(ctx, index, tensor) (in place, no copy), wg_nn_errno_name(errno)
 *   exports   WG_SIGNATURE(json) defines `signature`; WASMGATE_MAIN defines `alloc` and `handle`
 *             (`_initialize` comes from the reactor start files, -mexec-model=reactor)
 *   files     WG_FILES_DIR ("/files"): the function's data files, read with plain libc, e.g.
 *             fopen(WG_FILES_DIR "/vocab", "rb") (ABI.md "Files")
 *
 * Limits: at most WG_MAX_TENSORS (64) inputs and 64 output specs per request and WG_MAX_DIMS (8) dims per
 * tensor (more: the request is refused with status 1 before wg_handle runs); status messages are cut to
 * WG_MSG_MAX-1 (511) bytes; a response must stay under 1 GiB (the ABI's 30-bit length). build.py links a
 * 64 KiB stack: keep large arrays off the stack (malloc, or static storage).
 *
 * Memory policy. `alloc` frees the previous request buffer and the previous response buffer before it
 * allocates the new request (the ABI allows this: the host is done with both by then). Every pointer into a
 * request (wg_tensor.name/dims/data) is therefore valid only during the `wg_handle` call that received it.
 * Status messages live in static storage and stay valid until the next status call of the same kind.
 *
 * Thread-safety: none needed; wasm32-wasi guests are single-threaded and the host makes one call at a time.
 */
#ifndef WASMGATE_H
#define WASMGATE_H

#if !defined(__wasm32__)
#error "wasmgate.h targets wasm32-wasi (build with -target wasm32-wasi / --target=wasm32-wasi)"
#endif

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WG_ABI_VERSION 1

/* ======================================================================================================
 * Limits
 * ====================================================================================================== */

/** Most input tensors, and separately most output specs, a request may carry (more: invalid request). */
#ifndef WG_MAX_TENSORS
#define WG_MAX_TENSORS 64
#endif
/** Most dimensions of one tensor (fixed by the ABI). */
#define WG_MAX_DIMS 8
/** Status messages are truncated to WG_MSG_MAX - 1 bytes. */
#ifndef WG_MSG_MAX
#define WG_MSG_MAX 512
#endif
/** A response (and a status message) must be shorter than 2^30 bytes: the length has 30 bits. */
#define WG_MAX_RESULT_LEN 0x3FFFFFFFu
/** The wire value of a dimension not known ahead (-1 in OIP metadata). */
#define WG_DYNAMIC_DIM 0xFFFFFFFFu
/** "WGT1" read as a little-endian u32. */
#define WG_MAGIC 0x31544757u

/* ======================================================================================================
 * dtype codes (ABI.md "dtype codes"); 0..5 equal WASI-NN's tensor_type
 * ====================================================================================================== */
enum {
    WG_FP16 = 0,
    WG_FP32 = 1,
    WG_FP64 = 2,
    WG_UINT8 = 3,
    WG_INT32 = 4,
    WG_INT64 = 5,
    WG_INT8 = 6,
    WG_INT16 = 7,
    WG_UINT16 = 8,
    WG_UINT32 = 9,
    WG_UINT64 = 10,
    WG_BOOL = 11,
    WG_BF16 = 12,
    WG_BYTES = 13,
    WG_DTYPE_COUNT = 14
};

/** Bytes per element of a dtype code; 0 for BYTES (variable length) and for unknown codes. */
static inline uint32_t wg_dtype_size(uint32_t dtype) {
    static const uint8_t sizes[WG_DTYPE_COUNT] = {2, 4, 8, 1, 4, 8, 1, 2, 2, 4, 8, 1, 2, 0};
    return dtype < WG_DTYPE_COUNT ? sizes[dtype] : 0;
}

/** The OIP datatype name of a dtype code ("FP32", ...), or "?" for an unknown code. */
static inline const char *wg_dtype_name(uint32_t dtype) {
    static const char *const names[WG_DTYPE_COUNT] = {"FP16",  "FP32",   "FP64",   "UINT8",  "INT32",
                                                       "INT64", "INT8",   "INT16",  "UINT16", "UINT32",
                                                       "UINT64", "BOOL",  "BF16",   "BYTES"};
    return dtype < WG_DTYPE_COUNT ? names[dtype] : "?";
}

/* ======================================================================================================
 * WASI-NN (witx `wasi_ephemeral_nn`), the host's model runner. See ABI.md "WASI-NN".
 * ====================================================================================================== */

/** nn_errno. Every wg_nn_* import returns one of these (as an i32). */
typedef enum wg_nn_errno {
    WG_NN_SUCCESS = 0,
    WG_NN_INVALID_ARGUMENT = 1,
    WG_NN_INVALID_ENCODING = 2,
    WG_NN_MISSING_MEMORY = 3,
    WG_NN_BUSY = 4,
    WG_NN_RUNTIME_ERROR = 5,
    WG_NN_UNSUPPORTED_OPERATION = 6,
    WG_NN_TOO_LARGE = 7,
    WG_NN_NOT_FOUND = 8
} wg_nn_errno;

/** graph_encoding. The wasmgate host accepts ONNX and AUTODETECT. */
typedef enum wg_nn_graph_encoding {
    WG_NN_ENCODING_OPENVINO = 0,
    WG_NN_ENCODING_ONNX = 1,
    WG_NN_ENCODING_TENSORFLOW = 2,
    WG_NN_ENCODING_PYTORCH = 3,
    WG_NN_ENCODING_TENSORFLOWLITE = 4,
    WG_NN_ENCODING_AUTODETECT = 5
} wg_nn_graph_encoding;

/** execution_target. Recorded by the host; models run on CPU. */
typedef enum wg_nn_execution_target {
    WG_NN_TARGET_CPU = 0,
    WG_NN_TARGET_GPU = 1,
    WG_NN_TARGET_TPU = 2
} wg_nn_execution_target;

/** tensor_type, the current witx (wasmtime) numbering; equal to the WG_* dtype codes 0..5. */
typedef enum wg_nn_tensor_type {
    WG_NN_TYPE_F16 = 0,
    WG_NN_TYPE_F32 = 1,
    WG_NN_TYPE_F64 = 2,
    WG_NN_TYPE_U8 = 3,
    WG_NN_TYPE_I32 = 4,
    WG_NN_TYPE_I64 = 5
} wg_nn_tensor_type;

typedef uint32_t wg_nn_graph;   /**< a graph handle (per instance) */
typedef uint32_t wg_nn_ctx;     /**< an execution context handle (per instance) */

/** witx `graph_builder`: one byte buffer of a model ({ptr, len}, 8 bytes). */
typedef struct wg_nn_graph_builder {
    const uint8_t *ptr;
    uint32_t len;
} wg_nn_graph_builder;

/** witx `tensor` (20 bytes, align 4): dims, element type, row-major little-endian data. */
typedef struct wg_nn_tensor {
    const uint32_t *dims;   /* @0  */
    uint32_t dims_len;      /* @4  */
    uint8_t type;           /* @8  a wg_nn_tensor_type */
    uint8_t pad_[3];        /* @9  zero */
    const void *data;       /* @12 */
    uint32_t data_len;      /* @16 bytes */
} wg_nn_tensor;

_Static_assert(sizeof(void *) == 4, "wasm32 only");
_Static_assert(sizeof(wg_nn_errno) == 4, "enums must be i32-sized for the import signatures");
_Static_assert(sizeof(wg_nn_graph_builder) == 8, "graph_builder is 8 bytes");
_Static_assert(offsetof(wg_nn_graph_builder, len) == 4, "graph_builder.len at 4");
_Static_assert(sizeof(wg_nn_tensor) == 20 && _Alignof(wg_nn_tensor) == 4, "tensor is 20 bytes, align 4");
_Static_assert(offsetof(wg_nn_tensor, dims) == 0 && offsetof(wg_nn_tensor, dims_len) == 4 &&
                   offsetof(wg_nn_tensor, type) == 8 && offsetof(wg_nn_tensor, data) == 12 &&
                   offsetof(wg_nn_tensor, data_len) == 16,
               "tensor field offsets");

#define WG_NN_IMPORT_(name) __attribute__((import_module("wasi_ephemeral_nn"), import_name(name)))

/** load(builder_array_ptr, builder_array_len, encoding, target, graph_out). wasmgate: exactly 1 builder. */
WG_NN_IMPORT_("load")
wg_nn_errno wg_nn_load(const wg_nn_graph_builder *builders, uint32_t n_builders, uint32_t encoding,
                       uint32_t target, wg_nn_graph *graph_out);
/** load_by_name(name_ptr, name_len, graph_out): a model pushed with the function under that alias. */
WG_NN_IMPORT_("load_by_name")
wg_nn_errno wg_nn_load_by_name(const char *name, uint32_t name_len, wg_nn_graph *graph_out);
/** init_execution_context(graph, ctx_out). */
WG_NN_IMPORT_("init_execution_context")
wg_nn_errno wg_nn_init_execution_context(wg_nn_graph graph, wg_nn_ctx *ctx_out);
/** set_input(ctx, index, tensor_ptr). The host copies the data before returning. */
WG_NN_IMPORT_("set_input")
wg_nn_errno wg_nn_set_input(wg_nn_ctx ctx, uint32_t index, const wg_nn_tensor *tensor);
/** compute(ctx). Every input must be set first. */
WG_NN_IMPORT_("compute")
wg_nn_errno wg_nn_compute(wg_nn_ctx ctx);
/** get_output(ctx, index, out_buf, out_buf_max, bytes_written_out). WG_NN_TOO_LARGE (nothing written) when
 * the output does not fit in out_buf_max bytes. */
WG_NN_IMPORT_("get_output")
wg_nn_errno wg_nn_get_output(wg_nn_ctx ctx, uint32_t index, void *out_buf, uint32_t out_buf_max,
                             uint32_t *bytes_written_out);

/* wasmgate's extension of WASI-NN, in an import module of its own ("wasmgate_nn"; ABI.md "WASI-NN"). Like any
 * import here, it is imported only by a module that calls it. */
#define WG_NN_EXT_IMPORT_(name) __attribute__((import_module("wasmgate_nn"), import_name(name)))

/** get_output_dims(ctx, index, dims, dims_max, ndim_out): after compute, output `index`'s actual dims, which
 * witx get_output does not give (its bytes only): `*ndim_out` receives the rank and `dims` that many u32 values,
 * none of them WG_DYNAMIC_DIM. WG_NN_TOO_LARGE when the output has more than `dims_max` dims: only `*ndim_out`
 * is written (dims_max 0 asks for the rank alone). WG_NN_UNSUPPORTED_OPERATION before compute (or after a
 * set_input since), WG_NN_INVALID_ARGUMENT for a bad handle or index, or when `ndim_out` or the whole
 * dims_max-entry `dims` array is outside memory. */
WG_NN_EXT_IMPORT_("get_output_dims")
wg_nn_errno wg_nn_get_output_dims(wg_nn_ctx ctx, uint32_t index, uint32_t *dims, uint32_t dims_max,
                                  uint32_t *ndim_out);

/** The witx name of an nn_errno ("invalid_argument", ...); "unknown" for other values. */
static inline const char *wg_nn_errno_name(wg_nn_errno e) {
    static const char *const names[] = {"success",       "invalid_argument", "invalid_encoding",
                                        "missing_memory", "busy",            "runtime_error",
                                        "unsupported_operation", "too_large", "not_found"};
    return (uint32_t)e < sizeof names / sizeof names[0] ? names[(uint32_t)e] : "unknown";
}

/** load_by_name with a NUL-terminated alias. */
static inline wg_nn_errno wg_nn_load_by_name_str(const char *name, wg_nn_graph *graph_out) {
    return wg_nn_load_by_name(name, (uint32_t)strlen(name), graph_out);
}

/* ======================================================================================================
 * The request: a read-only view of the WGT1 buffer
 * ====================================================================================================== */

/** One tensor of a request, pointing into the request buffer (nothing is copied).
 *  `name` is NOT NUL-terminated: use name_len, or wg_tensor_name_is(). `dims` and `data` are 8-byte aligned.
 *  For an input, data_len == numel * wg_dtype_size(dtype) has been checked (except BYTES).
 *  For an output spec, data_len is 0 (data points at an empty area) and a dim may be WG_DYNAMIC_DIM. */
typedef struct wg_tensor {
    const char *name;
    uint32_t name_len;
    uint32_t dtype;            /* a WG_* dtype code */
    uint32_t ndim;             /* <= WG_MAX_DIMS */
    const uint32_t *dims;      /* ndim entries */
    const uint8_t *data;
    uint32_t data_len;         /* bytes */
} wg_tensor;

/** A parsed request: the inputs in the function's declared order, then the output specs. */
typedef struct wg_request {
    wg_tensor inputs[WG_MAX_TENSORS];
    uint32_t n_inputs;
    wg_tensor outputs[WG_MAX_TENSORS];
    uint32_t n_outputs;
} wg_request;

static inline uint64_t wg_pad8_(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

static inline uint32_t wg_load_u32_(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4); /* wasm32 is little-endian, like the wire format */
    return v;
}

/** Product of the dims; UINT64_MAX if it overflows 64 bits. (A WG_DYNAMIC_DIM counts as 4294967295.) */
static inline uint64_t wg_dims_numel(uint32_t ndim, const uint32_t *dims) {
    uint64_t n = 1;
    for (uint32_t i = 0; i < ndim; i++) {
        if (dims[i] != 0 && n > UINT64_MAX / dims[i]) return UINT64_MAX;
        n *= dims[i];
    }
    return n;
}

/** Number of elements of a tensor (see wg_dims_numel). */
static inline uint64_t wg_tensor_numel(const wg_tensor *t) { return wg_dims_numel(t->ndim, t->dims); }

/** Whether the tensor's name equals the NUL-terminated `name`. */
static inline int wg_tensor_name_is(const wg_tensor *t, const char *name) {
    size_t n = strlen(name);
    return n == t->name_len && memcmp(t->name, name, n) == 0;
}

/** The input called `name`, or NULL. */
static inline const wg_tensor *wg_request_input(const wg_request *req, const char *name) {
    for (uint32_t i = 0; i < req->n_inputs; i++)
        if (wg_tensor_name_is(&req->inputs[i], name)) return &req->inputs[i];
    return NULL;
}

/** The output spec called `name`, or NULL. */
static inline const wg_tensor *wg_request_output(const wg_request *req, const char *name) {
    for (uint32_t i = 0; i < req->n_outputs; i++)
        if (wg_tensor_name_is(&req->outputs[i], name)) return &req->outputs[i];
    return NULL;
}

/**
 * Parse a WGT1 request of `len` bytes at `buf` into `req` (views into `buf`, no copies).
 * Returns NULL on success, or a static message saying what is malformed. Never reads outside [buf, buf+len).
 * Checks: 8-byte alignment of buf; the 16-byte header and the magic; n_inputs and n_outputs each at most
 * WG_MAX_TENSORS; every entry (header, dims, name, data, including padding except after the last entry's
 * data) inside the buffer; ndim <= WG_MAX_DIMS; for inputs a known dtype code and, except BYTES,
 * data_len == product(dims) * element size (computed without overflow). Output specs are not checked against
 * their data_len (it is 0) and may carry WG_DYNAMIC_DIM. The reserved header word and bytes after the last
 * entry are ignored.
 */
static inline const char *wg_parse_request(const void *buf, uint32_t len, wg_request *req) {
    const uint8_t *b = (const uint8_t *)buf;
    req->n_inputs = req->n_outputs = 0;
    if (b == NULL || ((uintptr_t)b & 7u) != 0) return "request buffer is not 8-byte aligned";
    if (len < 16) return "request is shorter than the 16-byte header";
    if (wg_load_u32_(b) != WG_MAGIC) return "request has a bad magic (expected \"WGT1\")";
    uint32_t n_in = wg_load_u32_(b + 4), n_out = wg_load_u32_(b + 8);
    if (n_in > WG_MAX_TENSORS) return "request has too many input tensors";
    if (n_out > WG_MAX_TENSORS) return "request has too many output specs";
    uint64_t pos = 16;
    for (uint32_t i = 0; i < n_in + n_out; i++) {
        if (pos > len || (uint64_t)len - pos < 16)
            return "request entry header runs past the end of the buffer";
        const uint8_t *e = b + pos;
        uint32_t name_len = wg_load_u32_(e), dtype = wg_load_u32_(e + 4);
        uint32_t ndim = wg_load_u32_(e + 8), data_len = wg_load_u32_(e + 12);
        if (ndim > WG_MAX_DIMS) return "request tensor has more than 8 dims";
        uint64_t dims_at = pos + 16;
        uint64_t name_at = dims_at + wg_pad8_(4u * (uint64_t)ndim);
        uint64_t data_at = name_at + wg_pad8_(name_len);
        uint64_t data_end = data_at + data_len;
        if (data_end > len) return "request tensor runs past the end of the buffer";
        wg_tensor *t = i < n_in ? &req->inputs[i] : &req->outputs[i - n_in];
        t->name = (const char *)(b + name_at);
        t->name_len = name_len;
        t->dtype = dtype;
        t->ndim = ndim;
        t->dims = (const uint32_t *)(const void *)(b + dims_at);
        t->data = b + data_at;
        t->data_len = data_len;
        if (i < n_in) {
            if (dtype >= WG_DTYPE_COUNT) return "request input has an unknown dtype code";
            uint32_t size = wg_dtype_size(dtype);
            if (size != 0) {
                uint64_t numel = wg_tensor_numel(t);
                if (numel > UINT32_MAX || numel * size != data_len)
                    return "request input's data_len does not match its dims and dtype";
            }
        }
        pos = data_at + wg_pad8_(data_len);
    }
    req->n_inputs = n_in;
    req->n_outputs = n_out;
    return NULL;
}

/* ======================================================================================================
 * Results: the packed i64 of `handle` (ABI.md "One call")
 * ====================================================================================================== */

/** What `handle` returns: bits 0-31 pointer, 32-61 length, 62-63 status. */
typedef int64_t wg_result;

enum { WG_STATUS_OK = 0, WG_STATUS_INVALID = 1, WG_STATUS_FAILED = 2 };

/** Pack a result. `buf` must stay valid until the host's next call into the instance; len < 2^30. */
static inline wg_result wg_status(uint32_t status, const void *buf, uint32_t len) {
    uint64_t r = (uint64_t)(uintptr_t)buf | ((uint64_t)(len & WG_MAX_RESULT_LEN) << 32) |
                 ((uint64_t)(status & 3u) << 62);
    return (wg_result)r;
}

static inline wg_result wg_status_msg_(uint32_t status, const char *msg, char *store) {
    size_t n = msg ? strlen(msg) : 0;
    if (n > WG_MSG_MAX - 1) n = WG_MSG_MAX - 1;
    if (n) memmove(store, msg, n);
    store[n] = 0;
    return wg_status(status, store, (uint32_t)n);
}

/** Status 1, "invalid request" (HTTP 400), with a UTF-8 message. The message is copied (truncated to
 *  WG_MSG_MAX-1 bytes), so it may live on the stack. */
static inline wg_result wg_invalid(const char *msg) {
    static char store[WG_MSG_MAX];
    return wg_status_msg_(WG_STATUS_INVALID, msg, store);
}

/** Status 2, "function failed" (HTTP 500), with a UTF-8 message (copied, like wg_invalid). */
static inline wg_result wg_failed(const char *msg) {
    static char store[WG_MSG_MAX];
    return wg_status_msg_(WG_STATUS_FAILED, msg, store);
}

/* --- message formatting without printf ------------------------------------------------------------- */

/** A message being built; `text` is always NUL-terminated, appends past WG_MSG_MAX-1 bytes are dropped.
 *      wg_msg m; wg_msg_init(&m);
 *      wg_msg_str(&m, "row "); wg_msg_u64(&m, r); wg_msg_str(&m, " is out of range");
 *      return wg_invalid(m.text);                                                              */
typedef struct wg_msg {
    uint32_t len;
    char text[WG_MSG_MAX];
} wg_msg;

static inline wg_msg *wg_msg_init(wg_msg *m) {
    m->len = 0;
    m->text[0] = 0;
    return m;
}

/** Append `n` bytes of `s`. */
static inline wg_msg *wg_msg_strn(wg_msg *m, const char *s, size_t n) {
    size_t room = WG_MSG_MAX - 1 - m->len;
    if (n > room) n = room;
    memcpy(m->text + m->len, s, n);
    m->len += (uint32_t)n;
    m->text[m->len] = 0;
    return m;
}

/** Append a NUL-terminated string. */
static inline wg_msg *wg_msg_str(wg_msg *m, const char *s) { return wg_msg_strn(m, s, strlen(s)); }

/** Append an unsigned integer in decimal. */
static inline wg_msg *wg_msg_u64(wg_msg *m, uint64_t v) {
    char digits[20];
    size_t n = 0;
    do {
        digits[sizeof digits - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return wg_msg_strn(m, digits + sizeof digits - n, n);
}

/** Append a signed integer in decimal. */
static inline wg_msg *wg_msg_i64(wg_msg *m, int64_t v) {
    if (v < 0) {
        wg_msg_strn(m, "-", 1);
        return wg_msg_u64(m, (uint64_t)0 - (uint64_t)v);
    }
    return wg_msg_u64(m, (uint64_t)v);
}

/** Status 2 for a failed WASI-NN call: "wasi-nn <call> failed: <errno name> (<errno>)". */
static inline wg_result wg_nn_failed(const char *call, wg_nn_errno e) {
    wg_msg m;
    wg_msg_init(&m);
    wg_msg_str(&m, "wasi-nn ");
    wg_msg_str(&m, call);
    wg_msg_str(&m, " failed: ");
    wg_msg_str(&m, wg_nn_errno_name(e));
    wg_msg_str(&m, " (");
    wg_msg_u64(&m, (uint32_t)e);
    wg_msg_str(&m, ")");
    return wg_failed(m.text);
}

/* ======================================================================================================
 * WASI-NN convenience
 * ====================================================================================================== */

/** set_input with a request tensor, in place: the wasi-nn tensor points at the request's dims and data (no
 *  copy). A dtype the WASI-NN tensor_type has no value for (codes 6..13) gives WG_NN_INVALID_ARGUMENT
 *  without calling the host. */
static inline wg_nn_errno wg_nn_set_input_tensor(wg_nn_ctx ctx, uint32_t index, const wg_tensor *t) {
    if (t->dtype > WG_NN_TYPE_I64) return WG_NN_INVALID_ARGUMENT;
    wg_nn_tensor nt;
    memset(&nt, 0, sizeof nt);
    nt.dims = t->dims;
    nt.dims_len = t->ndim;
    nt.type = (uint8_t)t->dtype;
    nt.data = t->data;
    nt.data_len = t->data_len;
    return wg_nn_set_input(ctx, index, &nt);
}

/* ======================================================================================================
 * The response builder
 * ====================================================================================================== */

/** A WGT1 response being built in one heap buffer. The SDK hands `wg_handle` a begun builder; a function
 *  adds tensors and returns wg_response_finish(resp). An allocation failure is sticky: the add/reserve call
 *  returns -1/NULL, and wg_response_finish then returns status 2 with the reason (out of memory, a response
 *  of 1 GiB or more, a tensor with more than 8 dims). */
typedef struct wg_response {
    uint8_t *buf;
    uint32_t len;      /* bytes used */
    uint32_t cap;      /* bytes allocated */
    uint32_t count;    /* tensors added */
    uint32_t last;     /* offset of the last entry (0: none) */
    uint32_t last_data;/* offset of the last entry's data */
    int failed;        /* sticky: a reserve/add/resize failed; `error` says why */
    const char *error;
} wg_response;

static inline int wg_response_fail_(wg_response *r, const char *why) {
    if (!r->failed) r->error = why;
    r->failed = 1;
    return 0;
}

static inline int wg_response_grow_(wg_response *r, uint64_t need) {
    if (r->failed) return 0;
    if (need > WG_MAX_RESULT_LEN) return wg_response_fail_(r, "the response would be larger than 1 GiB");
    if (need <= r->cap) return 1;
    uint64_t cap = r->cap ? r->cap : 4096;
    while (cap < need) cap *= 2;
    if (cap > WG_MAX_RESULT_LEN + 1u) cap = need;
    uint8_t *nb = (uint8_t *)realloc(r->buf, (size_t)cap);
    if (!nb) return wg_response_fail_(r, "out of memory while building the response");
    r->buf = nb;
    r->cap = (uint32_t)cap;
    return 1;
}

/** Start an empty response (reusing r->buf if it has one). The SDK calls this before wg_handle. */
static inline void wg_response_begin(wg_response *r) {
    r->len = r->count = r->last = r->last_data = 0;
    r->failed = 0;
    r->error = NULL;
    if (!wg_response_grow_(r, 16)) return;
    memset(r->buf, 0, 16);
    r->len = 16;
}

/** Append a tensor whose data area (`data_len` bytes, zeroed) the caller fills afterwards; returns a pointer
 *  to it (8-byte aligned), or NULL when out of memory, ndim > WG_MAX_DIMS, or the response would reach 1 GiB.
 *  `name` is NUL-terminated; `dims` holds `ndim` entries, at most one WG_DYNAMIC_DIM (the host infers it
 *  from data_len; for a model output, wg_response_add_nn_output_actual writes its actual dims instead).
 *  The pointer is valid only until the next reserve/add/resize (the buffer may move; see wg_response_data).
 *  data_len must equal product(dims) * element size once the tensor is final (see wg_response_resize_last). */
static inline void *wg_response_reserve(wg_response *r, const char *name, uint32_t dtype, uint32_t ndim,
                                        const uint32_t *dims, uint32_t data_len) {
    if (r->failed || r->len < 16) return NULL;
    if (ndim > WG_MAX_DIMS) {
        wg_response_fail_(r, "a response tensor has more than 8 dims");
        return NULL;
    }
    size_t name_len = strlen(name);
    uint64_t dims_sz = wg_pad8_(4u * (uint64_t)ndim), name_sz = wg_pad8_(name_len);
    uint64_t need = 16 + dims_sz + name_sz + wg_pad8_(data_len);
    uint64_t at = r->len;
    if (!wg_response_grow_(r, at + need)) return NULL;
    uint8_t *e = r->buf + at;
    memset(e, 0, (size_t)need);
    uint32_t hdr[4] = {(uint32_t)name_len, dtype, ndim, data_len};
    memcpy(e, hdr, sizeof hdr);
    if (ndim) memcpy(e + 16, dims, 4u * ndim);
    memcpy(e + 16 + dims_sz, name, name_len);
    r->last = (uint32_t)at;
    r->last_data = (uint32_t)(at + 16 + dims_sz + name_sz);
    r->len = (uint32_t)(at + need);
    r->count++;
    return r->buf + r->last_data;
}

/** Append a tensor with a copy of `data_len` bytes of `data`. Returns 0, or -1 (see wg_response_reserve). */
static inline int wg_response_add(wg_response *r, const char *name, uint32_t dtype, uint32_t ndim,
                                  const uint32_t *dims, const void *data, uint32_t data_len) {
    void *dst = wg_response_reserve(r, name, dtype, ndim, dims, data_len);
    if (!dst) return -1;
    if (data_len) memcpy(dst, data, data_len);
    return 0;
}

/** Change the data length of the last tensor added (grow: the new bytes are zero; shrink: the tail is
 *  dropped). Returns the (possibly moved) data pointer, or NULL on failure or when there is no tensor. */
static inline void *wg_response_resize_last(wg_response *r, uint32_t data_len) {
    if (r->failed || r->count == 0 || r->last == 0) return NULL;
    uint64_t end = (uint64_t)r->last_data + wg_pad8_(data_len);
    if (!wg_response_grow_(r, end)) return NULL;
    uint32_t old_len;
    memcpy(&old_len, r->buf + r->last + 12, 4);
    uint64_t keep = old_len < data_len ? old_len : data_len;
    memset(r->buf + r->last_data + keep, 0, (size_t)(end - r->last_data - keep));
    memcpy(r->buf + r->last + 12, &data_len, 4);
    r->len = (uint32_t)end;
    return r->buf + r->last_data;
}

/** The data area of the `index`-th tensor added (0-based), or NULL. Valid until the next wg_response_* call
 *  that adds or resizes; use it to fill several reserved tensors after reserving them all. */
static inline void *wg_response_data(wg_response *r, uint32_t index) {
    if (r->failed || index >= r->count) return NULL;
    uint32_t pos = 16;
    for (uint32_t i = 0;; i++) {
        uint32_t hdr[4];
        memcpy(hdr, r->buf + pos, sizeof hdr); /* entries written by this builder: well-formed */
        uint32_t data_at = pos + 16 + (uint32_t)wg_pad8_(4u * hdr[2]) + (uint32_t)wg_pad8_(hdr[0]);
        if (i == index) return r->buf + data_at;
        pos = data_at + (uint32_t)wg_pad8_(hdr[3]);
    }
}

/** Remove the last tensor added (e.g. after a failed get_output into it). One level only: after it,
 *  wg_response_resize_last fails until the next reserve. */
static inline void wg_response_drop_last(wg_response *r) {
    if (r->failed || r->count == 0 || r->last == 0) return;
    r->len = r->last;
    r->count--;
    r->last = r->last_data = 0; /* only one level of undo */
}

/** get_output(ctx, index) straight into a new response tensor {name, dtype, ndim, dims}. Starts with a
 *  buffer of `size_hint` bytes (64 KiB if 0), doubles it on WG_NN_TOO_LARGE, and trims it to the bytes
 *  written. Returns the errno; on failure the tensor is removed again, and WG_NN_TOO_LARGE with r->failed
 *  set means the response buffer could not grow (or ndim > WG_MAX_DIMS). `bytes_written` (may be NULL) receives the output size.
 *  The dims are written as given; for the output's actual dims, see wg_response_add_nn_output_actual. */
static inline wg_nn_errno wg_response_add_nn_output(wg_response *r, wg_nn_ctx ctx, uint32_t index,
                                                    const char *name, uint32_t dtype, uint32_t ndim,
                                                    const uint32_t *dims, uint32_t size_hint,
                                                    uint32_t *bytes_written) {
    uint32_t size = size_hint ? size_hint : 65536u;
    if (size > WG_MAX_RESULT_LEN / 2) size = WG_MAX_RESULT_LEN / 2;
    void *dst = wg_response_reserve(r, name, dtype, ndim, dims, size);
    if (!dst) return WG_NN_TOO_LARGE; /* nothing was added; r->failed is set */
    for (;;) {
        uint32_t written = 0;
        wg_nn_errno e = wg_nn_get_output(ctx, index, dst, size, &written);
        if (e == WG_NN_SUCCESS && written <= size) {
            if (bytes_written) *bytes_written = written;
            return wg_response_resize_last(r, written) ? WG_NN_SUCCESS : WG_NN_TOO_LARGE;
        }
        if (e != WG_NN_TOO_LARGE) {
            wg_response_drop_last(r);
            return e == WG_NN_SUCCESS ? WG_NN_RUNTIME_ERROR : e; /* success with written > size: host bug */
        }
        if (size >= WG_MAX_RESULT_LEN / 2) {
            wg_response_drop_last(r);
            return WG_NN_TOO_LARGE;
        }
        size *= 2;
        dst = wg_response_resize_last(r, size);
        if (!dst) return WG_NN_TOO_LARGE; /* r->failed is set: the response is lost anyway */
    }
}

/** get_output(ctx, index) into a new response tensor {name, dtype} with the output's actual dims, asked of the
 *  host with wg_nn_get_output_dims: no dim is left WG_DYNAMIC_DIM, however many the model leaves open (a
 *  transformer's [batch, sequence, hidden]). The data area is sized from those dims and `dtype` (the output's
 *  element type), so one get_output call fills it. Returns the errno as wg_response_add_nn_output does (the
 *  tensor is removed again on failure); an output of more than WG_MAX_DIMS dims is WG_NN_TOO_LARGE with
 *  r->failed set. `bytes_written` (may be NULL) receives the output size. */
static inline wg_nn_errno wg_response_add_nn_output_actual(wg_response *r, wg_nn_ctx ctx, uint32_t index,
                                                           const char *name, uint32_t dtype,
                                                           uint32_t *bytes_written) {
    uint32_t dims[WG_MAX_DIMS], ndim = 0;
    wg_nn_errno e = wg_nn_get_output_dims(ctx, index, dims, WG_MAX_DIMS, &ndim);
    if (e == WG_NN_TOO_LARGE) {
        wg_response_fail_(r, "a model output has more than 8 dims");
        return e;
    }
    if (e != WG_NN_SUCCESS) return e;
    if (ndim > WG_MAX_DIMS) return WG_NN_RUNTIME_ERROR; /* success with more dims than room: host bug */
    uint64_t numel = wg_dims_numel(ndim, dims), size = wg_dtype_size(dtype);
    /* The exact size when it is known and fits; else (BYTES, or 1 GiB or more) 0: get_output's doubling finds
     * out from the default start. An empty output gets 8 bytes, since a hint of 0 means "the default". */
    uint32_t hint = 0;
    if (size && numel <= WG_MAX_RESULT_LEN / size) hint = numel ? (uint32_t)(numel * size) : 8u;
    return wg_response_add_nn_output(r, ctx, index, name, dtype, ndim, dims, hint, bytes_written);
}

/** Finish the response: status 0 with the buffer, or status 2 if a reserve/add/resize failed on the way. */
static inline wg_result wg_response_finish(wg_response *r) {
    if (r->failed || r->len < 16)
        return wg_failed(r->error ? r->error : "out of memory while building the response");
    uint32_t hdr[4] = {WG_MAGIC, r->count, 0, 0};
    memcpy(r->buf, hdr, sizeof hdr);
    return wg_status(WG_STATUS_OK, r->buf, r->len);
}

/* ======================================================================================================
 * Data files (ABI.md "Files")
 * ====================================================================================================== */

/** The read-only directory of the files pushed with the function (`wasm push --file ALIAS=PATH`), each named
 *  by its alias: read them with standard WASI calls (fopen, open, read, opendir), in `_initialize` or in
 *  wg_handle. Writes fail (EPERM), and nothing outside it is reachable. Absent for a function without files. */
#define WG_FILES_DIR "/files"

/* ======================================================================================================
 * The function the user writes, and the optional signature
 * ====================================================================================================== */

/** Serve one request. `req` is parsed and bounds-checked; `resp` is an empty, begun response. Return
 *  wg_response_finish(resp), wg_invalid(msg), wg_failed(msg), wg_nn_failed(call, errno) or any wg_status().
 *  Defined by the function author; called by the SDK's `handle` export (WASMGATE_MAIN). */
wg_result wg_handle(const wg_request *req, wg_response *resp);

/** Define the exported `signature` function returning `json` (a string literal: the ABI's signature
 *  document, {"inputs":[{"name","datatype","shape"}...],"outputs":[...]} with -1 for unknown dims).
 *  Use at file scope, at most once per module. */
#define WG_SIGNATURE(json)                                                                                 \
    __attribute__((export_name("signature"))) const char *wg_signature_export_(void);                     \
    const char *wg_signature_export_(void) {                                                               \
        static const char doc_[] = json;                                                                   \
        return doc_;                                                                                       \
    }

/* ======================================================================================================
 * The exports (one translation unit defines WASMGATE_MAIN)
 * ====================================================================================================== */
#ifdef WASMGATE_MAIN

static void *wg_main_request_;
static wg_response wg_main_response_;
static wg_request wg_main_req_;

/* `alloc(size) -> ptr`: frees the previous request and response, then returns `size` bytes, 8-byte aligned
 * (malloc's alignment on wasm32 is 16), or 0 when out of memory. Sizes within 64 KiB of 4 GiB are refused
 * outright: some wasm32 mallocs wrap around on them and return a small block. */
__attribute__((export_name("alloc"))) void *wg_alloc_export_(uint32_t size);
void *wg_alloc_export_(uint32_t size) {
    free(wg_main_request_);
    wg_main_request_ = NULL;
    free(wg_main_response_.buf);
    memset(&wg_main_response_, 0, sizeof wg_main_response_);
    if (size > UINT32_MAX - 65536u) return NULL;
    void *p = malloc(size ? (size_t)size : 1u);
    if (p && ((uintptr_t)p & 7u) != 0) {
        free(p);
        p = NULL;
    }
    wg_main_request_ = p;
    return p;
}

/* `handle(ptr, len) -> i64`: parse, then call wg_handle. A malformed request is status 1. */
__attribute__((export_name("handle"))) int64_t wg_handle_export_(uint32_t ptr, uint32_t len);
int64_t wg_handle_export_(uint32_t ptr, uint32_t len) {
    const char *err = wg_parse_request((const void *)(uintptr_t)ptr, len, &wg_main_req_);
    if (err) return wg_invalid(err);
    wg_response_begin(&wg_main_response_);
    if (wg_main_response_.failed) return wg_failed("out of memory while building the response");
    return wg_handle(&wg_main_req_, &wg_main_response_);
}

#endif /* WASMGATE_MAIN */

#endif /* WASMGATE_H */
