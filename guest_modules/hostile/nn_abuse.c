/*
 * nn_abuse: misuse of every WASI-NN import, one misuse per case, each reported honestly with the errno the host
 * gave (status 2, "wasi-nn <call> failed: <errno name> (<errno>)"; HTTP 500 with the host's cause appended).
 * The host must answer every one with an errno: none may trap, crash, or write outside the guest's memory.
 *
 * Pushed with the digits model as alias "digits" (float32 [N, 64] -> label, probabilities [N, 10]).
 * "Past the end" is the first byte after the guest's current linear memory; "far" is 0xFFFFFF00.
 *
 *   case  call                    misuse                                                     errno
 *    1    load                    builder array past the end of memory                       invalid_argument
 *    2    load                    builder whose model bytes run past the end of memory       invalid_argument
 *    3    load                    builder claiming 4 GiB of model bytes                      too_large
 *    4    load                    two builders                                               invalid_argument
 *    5    load                    encoding 0 (openvino)                                      invalid_encoding
 *    6    load                    graph_out pointer far outside memory                       invalid_argument
 *    7    load_by_name            name pointer past the end of memory                        invalid_argument
 *    8    load_by_name            graph_out pointer past the end of memory                   invalid_argument
 *    9    load_by_name            a model not pushed with the function                       not_found
 *   10    init_execution_context  a graph handle that was never returned                     invalid_argument
 *   11    init_execution_context  ctx_out pointer past the end of memory                     invalid_argument
 *   12    set_input               an execution context handle that was never returned        invalid_argument
 *   13    set_input               tensor struct pointer past the end of memory               invalid_argument
 *   14    set_input               dims pointer past the end of memory                        invalid_argument
 *   15    set_input               data pointer past the end of memory                        invalid_argument
 *   16    set_input               INT64 data into the model's float input                    invalid_argument
 *   17    set_input               dims [1, 32] for a [N, 64] input                           invalid_argument
 *   18    set_input               dims [4294967295, 64]: a 1 TiB tensor                      too_large
 *   19    set_input               input index 5 (the model has one input)                    invalid_argument
 *   20    compute                 before any set_input                                       unsupported_operation
 *   21    compute                 an execution context handle that was never returned        invalid_argument
 *   22    get_output              before compute                                             unsupported_operation
 *   23    get_output              buffer pointer past the end of memory                      invalid_argument
 *   24    get_output              buffer claiming 4 GiB, more than the whole memory          invalid_argument
 *   25    get_output              bytes_written pointer past the end of memory               invalid_argument
 *   26    get_output              a 4-byte buffer for a 40-byte output                       too_large
 *   27    get_output              output index 7 (the model has two outputs)                 invalid_argument
 *
 * Graph and contexts are made once per instance (the host caps handles per instance, and an instance serves
 * many requests): `g_fresh` never gets an input, `g_ready` gets one and is computed before each get_output case.
 */
#include "common.h"

#define ALIAS "digits"
#define FAR 0xFFFFFF00u

static int g_setup;
static wg_nn_graph g_graph;
static wg_nn_ctx g_fresh, g_ready;
static float g_pixels[64];
static const uint32_t g_dims[2] = {1, 64};

static uint32_t memory_end(void) { return (uint32_t)__builtin_wasm_memory_size(0) * 65536u; }

static wg_nn_tensor pixels_tensor(void) {
    wg_nn_tensor t;
    memset(&t, 0, sizeof t);
    t.dims = g_dims;
    t.dims_len = 2;
    t.type = WG_NN_TYPE_F32;
    t.data = g_pixels;
    t.data_len = sizeof g_pixels;
    return t;
}

static wg_result setup(void) {
    if (g_setup) return 0;
    wg_nn_errno e = wg_nn_load_by_name_str(ALIAS, &g_graph);
    if (e) return wg_nn_failed("setup load_by_name", e);
    if ((e = wg_nn_init_execution_context(g_graph, &g_fresh))) return wg_nn_failed("setup init_execution_context", e);
    if ((e = wg_nn_init_execution_context(g_graph, &g_ready))) return wg_nn_failed("setup init_execution_context", e);
    g_setup = 1;
    return 0;
}

/* set_input + compute on g_ready, so a get_output misuse meets a context that has outputs. */
static wg_result computed(void) {
    wg_nn_tensor t = pixels_tensor();
    wg_nn_errno e = wg_nn_set_input(g_ready, 0, &t);
    if (e) return wg_nn_failed("setup set_input", e);
    if ((e = wg_nn_compute(g_ready))) return wg_nn_failed("setup compute", e);
    return 0;
}

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    (void)resp;
    wg_result r = setup();
    if (r) return r;
    const uint32_t end = memory_end();
    static uint8_t scratch[64];
    static const uint8_t not_onnx[16] = "not a model";
    wg_nn_graph graph;
    wg_nn_ctx ctx;
    uint32_t written;
    wg_nn_tensor t = pixels_tensor();
    wg_nn_graph_builder builders[2] = {{not_onnx, sizeof not_onnx}, {not_onnx, sizeof not_onnx}};
    int64_t big_data[64];
    memset(big_data, 0, sizeof big_data);
    static const uint32_t half_dims[2] = {1, 32};
    static const uint32_t huge_dims[2] = {0xFFFFFFFFu, 64};

    switch (which) {
    case 1:
        return wg_nn_failed("load", wg_nn_load((const wg_nn_graph_builder *)(uintptr_t)(end - 4), 1, 1, 0, &graph));
    case 2:
        builders[0].ptr = (const uint8_t *)(uintptr_t)(end - 8);
        builders[0].len = 4096;
        return wg_nn_failed("load", wg_nn_load(builders, 1, 1, 0, &graph));
    case 3:
        builders[0].len = 0xFFFFFFFFu;
        return wg_nn_failed("load", wg_nn_load(builders, 1, 1, 0, &graph));
    case 4:
        return wg_nn_failed("load", wg_nn_load(builders, 2, 1, 0, &graph));
    case 5:
        return wg_nn_failed("load", wg_nn_load(builders, 1, 0, 0, &graph));
    case 6:
        return wg_nn_failed("load", wg_nn_load(builders, 1, 1, 0, (wg_nn_graph *)(uintptr_t)FAR));
    case 7:
        return wg_nn_failed("load_by_name", wg_nn_load_by_name((const char *)(uintptr_t)(end - 2), 6, &graph));
    case 8:
        return wg_nn_failed("load_by_name", wg_nn_load_by_name(ALIAS, 6, (wg_nn_graph *)(uintptr_t)end));
    case 9:
        return wg_nn_failed("load_by_name", wg_nn_load_by_name_str("secret-model", &graph));
    case 10:
        return wg_nn_failed("init_execution_context", wg_nn_init_execution_context(g_graph + 1000, &ctx));
    case 11:
        return wg_nn_failed("init_execution_context",
                            wg_nn_init_execution_context(g_graph, (wg_nn_ctx *)(uintptr_t)(end - 2)));
    case 12:
        return wg_nn_failed("set_input", wg_nn_set_input(g_ready + 1000, 0, &t));
    case 13:
        return wg_nn_failed("set_input", wg_nn_set_input(g_ready, 0, (const wg_nn_tensor *)(uintptr_t)(end - 10)));
    case 14:
        t.dims = (const uint32_t *)(uintptr_t)(end - 4);
        return wg_nn_failed("set_input", wg_nn_set_input(g_ready, 0, &t));
    case 15:
        t.data = (const void *)(uintptr_t)(end - 100);
        return wg_nn_failed("set_input", wg_nn_set_input(g_ready, 0, &t));
    case 16:
        t.type = WG_NN_TYPE_I64;
        t.data = big_data;
        t.data_len = sizeof big_data;
        return wg_nn_failed("set_input", wg_nn_set_input(g_ready, 0, &t));
    case 17:
        t.dims = half_dims;
        t.data_len = 32 * sizeof(float);
        return wg_nn_failed("set_input", wg_nn_set_input(g_ready, 0, &t));
    case 18:
        t.dims = huge_dims;
        t.data_len = 0xFFFFFFFFu;
        return wg_nn_failed("set_input", wg_nn_set_input(g_ready, 0, &t));
    case 19:
        return wg_nn_failed("set_input", wg_nn_set_input(g_ready, 5, &t));
    case 20:
        return wg_nn_failed("compute", wg_nn_compute(g_fresh));
    case 21:
        return wg_nn_failed("compute", wg_nn_compute(g_ready + 1000));
    case 22:
        return wg_nn_failed("get_output", wg_nn_get_output(g_fresh, 1, scratch, sizeof scratch, &written));
    }
    if (which >= 23 && which <= 27 && (r = computed())) return r;
    switch (which) {
    case 23:
        return wg_nn_failed("get_output", wg_nn_get_output(g_ready, 1, (void *)(uintptr_t)(end - 8), 4096, &written));
    case 24:
        return wg_nn_failed("get_output", wg_nn_get_output(g_ready, 1, scratch, 0xFFFFFFFFu, &written));
    case 25:
        return wg_nn_failed("get_output",
                            wg_nn_get_output(g_ready, 1, scratch, sizeof scratch, (uint32_t *)(uintptr_t)end));
    case 26:
        return wg_nn_failed("get_output", wg_nn_get_output(g_ready, 1, scratch, 4, &written));
    case 27:
        return wg_nn_failed("get_output", wg_nn_get_output(g_ready, 7, scratch, sizeof scratch, &written));
    }
    return hostile_unknown_case(which);
}
