/*
 * digits_topk: the top 3 classes of 8x8 handwritten digits, with pre- and post-processing around a model.
 *
 * Input  "images"        UINT8 [N, 64]  raw 8x8 pixels, values 0..16 (sklearn's load_digits layout)
 * Output "labels"        INT64 [N, 3]   the 3 most probable classes, most probable first
 *        "probabilities" FP32  [N, 3]   their probabilities
 *
 * The model is pushed with the function under the alias "digits": a classifier taking float32 [N, 64]
 * (pixels / 16) as input 0 and giving float32 [N, 10] class probabilities as output 1 (skl2onnx with
 * options={"zipmap": False}: output 0 is "label", output 1 "probabilities"). See README.md.
 */
#define WASMGATE_MAIN
#include "wasmgate.h"

#include <math.h>

WG_SIGNATURE("{\"inputs\":[{\"name\":\"images\",\"datatype\":\"UINT8\",\"shape\":[-1,64]}],"
             "\"outputs\":[{\"name\":\"labels\",\"datatype\":\"INT64\",\"shape\":[-1,3]},"
             "{\"name\":\"probabilities\",\"datatype\":\"FP32\",\"shape\":[-1,3]}]}")

#define N_PIXELS 64
#define N_CLASSES 10
#define TOP_K 3
#define MAX_PIXEL 16
#define MODEL_ALIAS "digits"
#define MODEL_OUTPUT_PROBABILITIES 1

/* Loaded once per instance and reused by every request. */
static int g_ready;
static wg_nn_graph g_graph;
static wg_nn_ctx g_ctx;

static wg_result ensure_model(void) {
    if (g_ready) return 0;
    wg_nn_errno e = wg_nn_load_by_name_str(MODEL_ALIAS, &g_graph);
    if (e != WG_NN_SUCCESS) return wg_nn_failed("load_by_name(\"" MODEL_ALIAS "\")", e);
    e = wg_nn_init_execution_context(g_graph, &g_ctx);
    if (e != WG_NN_SUCCESS) return wg_nn_failed("init_execution_context", e);
    g_ready = 1;
    return 0;
}

/* The indices of the TOP_K largest of p[0..N_CLASSES), largest first; ties go to the lower index, and a
 * NaN ranks below every number. */
static void top_k(const float *p, uint32_t out[TOP_K]) {
    int taken[N_CLASSES] = {0};
    for (uint32_t k = 0; k < TOP_K; k++) {
        int best = -1;
        for (int i = 0; i < N_CLASSES; i++) {
            if (taken[i]) continue;
            if (best < 0 || p[i] > p[best] || (isnan(p[best]) && !isnan(p[i]))) best = i;
        }
        taken[best] = 1;
        out[k] = (uint32_t)best;
    }
}

wg_result wg_handle(const wg_request *req, wg_response *resp) {
    wg_msg m;

    /* --- validate the request (the gateway checks it against the signature too, but the function does not
     * rely on that) --- */
    const wg_tensor *img = wg_request_input(req, "images");
    if (req->n_inputs != 1 || img == NULL) {
        wg_msg_init(&m);
        wg_msg_str(&m, "expected exactly one input tensor \"images\", got ");
        wg_msg_u64(&m, req->n_inputs);
        wg_msg_str(&m, req->n_inputs == 1 ? " tensor with another name" : " tensors");
        return wg_invalid(m.text);
    }
    if (img->dtype != WG_UINT8) {
        wg_msg_init(&m);
        wg_msg_str(&m, "input \"images\" must be UINT8, got ");
        wg_msg_str(&m, wg_dtype_name(img->dtype));
        return wg_invalid(m.text);
    }
    if (img->ndim != 2 || img->dims[1] != N_PIXELS) {
        wg_msg_init(&m);
        wg_msg_str(&m, "input \"images\" must have shape [N, 64] (8x8 pixels per row), got [");
        for (uint32_t i = 0; i < img->ndim; i++) {
            if (i) wg_msg_str(&m, ", ");
            wg_msg_u64(&m, img->dims[i]);
        }
        wg_msg_str(&m, "]");
        return wg_invalid(m.text);
    }
    uint32_t n = img->dims[0];
    if (n == 0) return wg_invalid("input \"images\" has no rows (N must be at least 1)");
    /* The largest buffer is the float input, n * 256 bytes (the host caps tensors far below this anyway). */
    if ((uint64_t)n * N_PIXELS * sizeof(float) > 0x40000000u)
        return wg_invalid("input \"images\" is too large (at most 4194304 rows)");
    for (uint32_t i = 0; i < img->data_len; i++) {
        if (img->data[i] > MAX_PIXEL) {
            wg_msg_init(&m);
            wg_msg_str(&m, "input \"images\": pixel values must be 0..16, got ");
            wg_msg_u64(&m, img->data[i]);
            wg_msg_str(&m, " at row ");
            wg_msg_u64(&m, i / N_PIXELS);
            wg_msg_str(&m, ", column ");
            wg_msg_u64(&m, i % N_PIXELS);
            return wg_invalid(m.text);
        }
    }

    wg_result r = ensure_model();
    if (r) return r;

    /* --- pre-processing: float32 pixels / 16 --- */
    uint32_t x_bytes = n * N_PIXELS * (uint32_t)sizeof(float);
    uint32_t p_bytes = n * N_CLASSES * (uint32_t)sizeof(float);
    float *x = (float *)malloc(x_bytes);
    float *probs = (float *)malloc(p_bytes);
    if (!x || !probs) {
        free(x);
        free(probs);
        return wg_failed("out of memory for a batch of this size");
    }
    for (uint32_t i = 0; i < img->data_len; i++) x[i] = (float)img->data[i] / 16.0f;

    /* --- inference --- */
    const uint32_t x_dims[2] = {n, N_PIXELS};
    wg_nn_tensor t = {.dims = x_dims, .dims_len = 2, .type = WG_NN_TYPE_F32, .data = x, .data_len = x_bytes};
    wg_nn_errno e = wg_nn_set_input(g_ctx, 0, &t);
    free(x); /* set_input copies the data */
    if (e != WG_NN_SUCCESS) {
        free(probs);
        return wg_nn_failed("set_input(0)", e);
    }
    e = wg_nn_compute(g_ctx);
    if (e != WG_NN_SUCCESS) {
        free(probs);
        return wg_nn_failed("compute", e);
    }
    uint32_t written = 0;
    e = wg_nn_get_output(g_ctx, MODEL_OUTPUT_PROBABILITIES, probs, p_bytes, &written);
    if (e != WG_NN_SUCCESS) {
        free(probs);
        return wg_nn_failed("get_output(1)", e);
    }
    if (written != p_bytes) {
        free(probs);
        wg_msg_init(&m);
        wg_msg_str(&m, "the model's output 1 has ");
        wg_msg_u64(&m, written);
        wg_msg_str(&m, " bytes, expected ");
        wg_msg_u64(&m, p_bytes);
        wg_msg_str(&m, " (float32 [N, 10] class probabilities)");
        return wg_failed(m.text);
    }

    /* --- post-processing: top 3 per row, straight into the response --- */
    const uint32_t out_dims[2] = {n, TOP_K};
    int ok = wg_response_reserve(resp, "labels", WG_INT64, 2, out_dims, n * TOP_K * (uint32_t)sizeof(int64_t)) &&
             wg_response_reserve(resp, "probabilities", WG_FP32, 2, out_dims, n * TOP_K * (uint32_t)sizeof(float));
    if (ok) {
        /* Reserving may move the buffer: fetch both data areas once both tensors exist. */
        int64_t *labels = (int64_t *)wg_response_data(resp, 0);
        float *top_p = (float *)wg_response_data(resp, 1);
        for (uint32_t row = 0; row < n; row++) {
            const float *p = probs + (size_t)row * N_CLASSES;
            uint32_t best[TOP_K];
            top_k(p, best);
            for (uint32_t k = 0; k < TOP_K; k++) {
                labels[row * TOP_K + k] = best[k];
                top_p[row * TOP_K + k] = p[best[k]];
            }
        }
    }
    free(probs);
    return wg_response_finish(resp); /* status 2 "out of memory" if a reserve failed */
}
