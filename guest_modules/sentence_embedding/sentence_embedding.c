/*
 * sentence_embedding: one vector per sentence from a BERT-style encoder, by the masked mean pooling that
 * sentence-transformers uses, with the encoder's token embeddings as they are.
 *
 * Input  "input_ids"          INT64 [N, S]     token ids (tokenizing stays with the caller)
 *        "attention_mask"     INT64 [N, S]     1 for a token, 0 for padding
 *        "token_type_ids"     INT64 [N, S]     segment ids (0 for a single sentence)
 * Output "token_embeddings"   FP32  [N, S, H]  the model's output 0, with its actual dims
 *        "sentence_embedding" FP32  [N, H]     per row, the mean of the token embeddings where the mask is not 0
 *
 * The model is pushed with the function under the alias "encoder": inputs 0..2 the three above, in that order,
 * and output 0 float32 [N, S, H] (a BERT encoder's last_hidden_state). H is the model's, whatever it is: the
 * function learns it from the host with wasmgate_nn.get_output_dims, since witx get_output gives bytes only.
 * See README.md.
 */
#define WASMGATE_MAIN
#include "wasmgate.h"

WG_SIGNATURE("{\"inputs\":[{\"name\":\"input_ids\",\"datatype\":\"INT64\",\"shape\":[-1,-1]},"
             "{\"name\":\"attention_mask\",\"datatype\":\"INT64\",\"shape\":[-1,-1]},"
             "{\"name\":\"token_type_ids\",\"datatype\":\"INT64\",\"shape\":[-1,-1]}],"
             "\"outputs\":[{\"name\":\"token_embeddings\",\"datatype\":\"FP32\",\"shape\":[-1,-1,-1]},"
             "{\"name\":\"sentence_embedding\",\"datatype\":\"FP32\",\"shape\":[-1,-1]}]}")

#define MODEL_ALIAS "encoder"
#define N_INPUTS 3

static const char *const INPUTS[N_INPUTS] = {"input_ids", "attention_mask", "token_type_ids"};

/* Loaded once per instance and reused by every request. */
static int g_ready;
static wg_nn_graph g_graph;
static wg_nn_ctx g_ctx;

wg_result wg_handle(const wg_request *req, wg_response *resp) {
    wg_msg m;
    const wg_tensor *in[N_INPUTS];
    for (int i = 0; i < N_INPUTS; i++) {
        in[i] = wg_request_input(req, INPUTS[i]);
        if (!in[i] || in[i]->dtype != WG_INT64 || in[i]->ndim != 2) {
            wg_msg_init(&m);
            wg_msg_str(wg_msg_str(&m, "expected an INT64 [N, S] input \""), INPUTS[i]);
            return wg_invalid(wg_msg_str(&m, "\"")->text);
        }
        if (in[i]->dims[0] != in[0]->dims[0] || in[i]->dims[1] != in[0]->dims[1])
            return wg_invalid("the three inputs must have the same shape [N, S]");
    }
    const uint32_t n = in[0]->dims[0], s = in[0]->dims[1];
    if (n == 0 || s == 0) return wg_invalid("the inputs are empty (N and S must be at least 1)");

    if (!g_ready) {
        wg_nn_errno e = wg_nn_load_by_name_str(MODEL_ALIAS, &g_graph);
        if (e != WG_NN_SUCCESS) return wg_nn_failed("load_by_name(\"" MODEL_ALIAS "\")", e);
        if ((e = wg_nn_init_execution_context(g_graph, &g_ctx)) != WG_NN_SUCCESS)
            return wg_nn_failed("init_execution_context", e);
        g_ready = 1;
    }
    for (uint32_t i = 0; i < N_INPUTS; i++) {
        wg_nn_errno e = wg_nn_set_input_tensor(g_ctx, i, in[i]); /* in place: the request's own bytes */
        if (e == WG_NN_INVALID_ARGUMENT) return wg_invalid("the model does not take these inputs");
        if (e != WG_NN_SUCCESS) return wg_nn_failed("set_input", e);
    }
    wg_nn_errno e = wg_nn_compute(g_ctx);
    if (e != WG_NN_SUCCESS) return wg_nn_failed("compute", e);

    /* Output 0 into the response with its actual dims, then those dims for the pooling. */
    e = wg_response_add_nn_output_actual(resp, g_ctx, 0, "token_embeddings", WG_FP32, NULL);
    if (e != WG_NN_SUCCESS) return resp->failed ? wg_response_finish(resp) : wg_nn_failed("get_output(0)", e);
    uint32_t dims[WG_MAX_DIMS], ndim = 0;
    e = wg_nn_get_output_dims(g_ctx, 0, dims, WG_MAX_DIMS, &ndim);
    if (e != WG_NN_SUCCESS) return wg_nn_failed("get_output_dims(0)", e);
    if (ndim != 3 || dims[0] != n || dims[1] != s)
        return wg_failed("the model's output 0 is not float32 [N, S, H] for inputs [N, S]");
    const uint32_t h = dims[2];

    const uint32_t pooled_dims[2] = {n, h};
    if (!wg_response_reserve(resp, "sentence_embedding", WG_FP32, 2, pooled_dims, n * h * (uint32_t)sizeof(float)))
        return wg_response_finish(resp); /* status 2: out of memory */
    /* Reserving may move the buffer: fetch both data areas once both tensors exist. */
    const float *tokens = (const float *)wg_response_data(resp, 0);
    float *pooled = (float *)wg_response_data(resp, 1);
    const int64_t *mask = (const int64_t *)(const void *)in[1]->data;
    for (uint32_t row = 0; row < n; row++) {
        float *out = pooled + (size_t)row * h; /* zeroed by the reserve */
        uint32_t count = 0;
        for (uint32_t t = 0; t < s; t++) {
            if (mask[(size_t)row * s + t] == 0) continue;
            const float *token = tokens + ((size_t)row * s + t) * h;
            for (uint32_t k = 0; k < h; k++) out[k] += token[k];
            count++;
        }
        /* An all-padding row stays zero, as sentence-transformers' clamped divisor leaves it. */
        if (count)
            for (uint32_t k = 0; k < h; k++) out[k] /= (float)count;
    }
    return wg_response_finish(resp);
}
