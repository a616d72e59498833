/*
 * text_embed: sentence embeddings from a BERT-style encoder, with the tokenizer in the function.
 *
 * Input  "text"      BYTES [N]          UTF-8 sentences
 * Output "embedding" FP32  [N, hidden]  attention-mask mean pooling of the encoder's output 0, L2-normalised
 *
 * The encoder is pushed with the function under the alias "encoder" (INT64 input_ids, attention_mask and,
 * optionally, token_type_ids, each [batch, seq]; output 0 FP32 [batch, seq, hidden]) and the vocab as the
 * function file "vocab" (BERT's vocab.txt), which the function reads at /files/vocab. See README.md.
 *
 * This file is the ABI glue; the tokenizer (tokenizer.c) knows nothing of WASI-NN or of wasmgate.h.
 */
#define WASMGATE_MAIN
#include "wasmgate.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>

#include "tokenizer.h"

WG_SIGNATURE("{\"inputs\":[{\"name\":\"text\",\"datatype\":\"BYTES\",\"shape\":[-1]}],"
             "\"outputs\":[{\"name\":\"embedding\",\"datatype\":\"FP32\",\"shape\":[-1,-1]}]}")

#define MODEL_ALIAS "encoder"
#define VOCAB_PATH "/files/vocab"
#define VOCAB_FIX "push the function with --file vocab=vocab.txt (BERT's vocab.txt, one token per line)"
/** Most vocab bytes read (BERT's uncased vocab.txt is 232 KiB, the multilingual one under 1 MiB). */
#define MAX_VOCAB_BYTES (16u << 20)
/** Tokens per sentence, [CLS] and [SEP] included: all-MiniLM-L6-v2's max_seq_length. */
#define MAX_TOKENS 256
/** Most floats per token the encoder's output may have before the function gives up growing its buffer. */
#define MAX_HIDDEN 16384u
/** First guess of the hidden size: all-MiniLM-L6-v2's. */
#define HIDDEN_GUESS 384u
/** Most sentences per request. It keeps every buffer size below 4 GiB, so none wraps around in wasm32's
 *  32-bit size_t: MAX_ROWS * MAX_TOKENS token cells of 24 bytes (three INT64 inputs) are 384 MiB. */
#define MAX_ROWS 65536u

/* Per instance, made on the first request that gets that far and reused by every later one. */
static tk_vocab *g_vocab;
static int g_model_ready;
static wg_nn_graph g_graph;
static wg_nn_ctx g_ctx;
static int g_n_inputs;     /* the encoder's inputs: 0 until the first compute tells, then 2 or 3 */
static uint32_t g_hidden;  /* the last hidden size seen: the first guess of the output's size */

/* ------------------------------------------------------------------------------------------------------ */

static wg_result vocab_failed(const char *what, const char *detail) {
    wg_msg m;
    wg_msg_init(&m);
    wg_msg_str(&m, "cannot load the vocab " VOCAB_PATH ": ");
    wg_msg_str(&m, what);
    if (detail) {
        wg_msg_str(&m, ": ");
        wg_msg_str(&m, detail);
    }
    wg_msg_str(&m, "; " VOCAB_FIX);
    return wg_failed(m.text);
}

/* Read /files/vocab into g_vocab, once per instance. */
static wg_result ensure_vocab(void) {
    if (g_vocab) return 0;
    FILE *f = fopen(VOCAB_PATH, "rb");
    if (!f) return vocab_failed("cannot open it", strerror(errno));
    /* Read up to one byte past the limit, so that a file over it is told apart from one exactly at it. */
    size_t cap = 1u << 16, len = 0;
    char *data = (char *)malloc(cap);
    int read_errno = 0;
    while (data) {
        if (len == cap) {
            if (cap > MAX_VOCAB_BYTES) break;
            size_t bigger = cap * 2 > MAX_VOCAB_BYTES + 1u ? MAX_VOCAB_BYTES + 1u : cap * 2;
            char *grown = (char *)realloc(data, bigger);
            if (!grown) {
                free(data);
                data = NULL;
                break;
            }
            data = grown;
            cap = bigger;
        }
        size_t got = fread(data + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) read_errno = errno ? errno : EIO;
            break;
        }
    }
    fclose(f);
    if (!data) return wg_failed("out of memory while reading the vocab " VOCAB_PATH);
    if (read_errno || len > MAX_VOCAB_BYTES) {
        free(data);
        return read_errno ? vocab_failed("cannot read it", strerror(read_errno))
                          : vocab_failed("it is larger than 16 MiB", NULL);
    }
    uint32_t line = 0;
    int err = tk_vocab_load(data, len, &g_vocab, &line);
    free(data);
    if (err == TK_ERR_UTF8) {
        wg_msg m;
        wg_msg_init(&m);
        wg_msg_str(&m, "line ");
        wg_msg_u64(&m, line);
        wg_msg_str(&m, " is not valid UTF-8");
        return vocab_failed(m.text, NULL);
    }
    if (err) return vocab_failed(tk_error_text(err), NULL);
    return 0;
}

static wg_result ensure_model(void) {
    if (g_model_ready) return 0;
    wg_nn_errno e = wg_nn_load_by_name_str(MODEL_ALIAS, &g_graph);
    if (e != WG_NN_SUCCESS) return wg_nn_failed("load_by_name(\"" MODEL_ALIAS "\")", e);
    e = wg_nn_init_execution_context(g_graph, &g_ctx);
    if (e != WG_NN_SUCCESS) return wg_nn_failed("init_execution_context", e);
    g_model_ready = 1;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------ */

/* The N sentences of a BYTES [N] tensor: row i is text[i], len[i] bytes. Status 1 when the layout is broken
 * or a row is not UTF-8 (naming the row). */
static wg_result split_rows(const wg_tensor *t, uint32_t n, const char **text, uint32_t *len) {
    wg_msg m;
    uint64_t at = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t size;
        if (t->data_len - at < 4) return wg_invalid("input \"text\": BYTES data ends inside an element length");
        memcpy(&size, t->data + at, 4);
        at += 4;
        if (t->data_len - at < size) return wg_invalid("input \"text\": BYTES data ends inside an element");
        text[i] = (const char *)t->data + at;
        len[i] = size;
        at += size;
        int64_t bad = tk_utf8_invalid_at(text[i], size);
        if (bad >= 0) {
            wg_msg_init(&m);
            wg_msg_str(&m, "input \"text\": row ");
            wg_msg_u64(&m, i);
            wg_msg_str(&m, " is not valid UTF-8 (at byte ");
            wg_msg_u64(&m, (uint64_t)bad);
            wg_msg_str(&m, ")");
            return wg_invalid(m.text);
        }
    }
    if (at != t->data_len) return wg_invalid("input \"text\": BYTES data holds more elements than its shape says");
    return 0;
}

static wg_result check_request(const wg_request *req, const wg_tensor **text) {
    wg_msg m;
    const wg_tensor *t = wg_request_input(req, "text");
    if (req->n_inputs != 1 || t == NULL) {
        wg_msg_init(&m);
        wg_msg_str(&m, "expected exactly one input tensor \"text\", got ");
        wg_msg_u64(&m, req->n_inputs);
        wg_msg_str(&m, req->n_inputs == 1 ? " tensor with another name" : " tensors");
        return wg_invalid(m.text);
    }
    if (t->dtype != WG_BYTES) {
        wg_msg_init(&m);
        wg_msg_str(&m, "input \"text\" must be BYTES (UTF-8 sentences), got ");
        wg_msg_str(&m, wg_dtype_name(t->dtype));
        return wg_invalid(m.text);
    }
    if (t->ndim != 1) return wg_invalid("input \"text\" must have shape [N], one sentence per row");
    if (t->dims[0] == 0) return wg_invalid("input \"text\" has no rows (N must be at least 1)");
    *text = t;
    return 0;
}

/* input_ids, attention_mask, token_type_ids: INT64 [n, seq]. */
static wg_nn_errno set_inputs(uint32_t n, uint32_t seq, const int64_t *ids, const int64_t *mask, const int64_t *types,
                              wg_result *failed) {
    const uint32_t dims[2] = {n, seq};
    uint32_t bytes = n * seq * (uint32_t)sizeof(int64_t);
    const int64_t *data[3] = {ids, mask, types};
    static const char *const call[3] = {"set_input(0: input_ids)", "set_input(1: attention_mask)",
                                        "set_input(2: token_type_ids)"};
    for (uint32_t i = 0; i < 3; i++) {
        if (i == 2 && g_n_inputs == 2) break;
        wg_nn_tensor t = {.dims = dims, .dims_len = 2, .type = WG_NN_TYPE_I64, .data = data[i], .data_len = bytes};
        wg_nn_errno e = wg_nn_set_input(g_ctx, i, &t);
        /* An encoder without token_type_ids: set_input answers invalid_argument for an index past its inputs.
         * Learnt on the first request; compute then tells whether the encoder had all it needs. */
        if (i == 2 && g_n_inputs == 0 && e == WG_NN_INVALID_ARGUMENT) {
            g_n_inputs = 2;
            break;
        }
        if (e != WG_NN_SUCCESS) {
            *failed = wg_nn_failed(call[i], e);
            return e;
        }
        if (i == 2) g_n_inputs = 3;
    }
    return WG_NN_SUCCESS;
}

/* Run the encoder on the batch and return its output 0 (malloc'd, `*floats` of them) in *out. */
static wg_result encode_batch(uint32_t n, uint32_t seq, const int32_t *tokens, const uint32_t *counts,
                              int32_t pad, float **out, uint64_t *floats) {
    size_t cells = (size_t)n * seq;
    int64_t *buf = (int64_t *)malloc(cells * 3 * sizeof(int64_t));
    if (!buf) return wg_failed("out of memory for the encoder's inputs: send fewer sentences at once");
    int64_t *ids = buf, *mask = buf + cells, *types = buf + 2 * cells;
    for (uint32_t i = 0; i < n; i++) {
        for (uint32_t j = 0; j < seq; j++) {
            int real = j < counts[i];
            ids[(size_t)i * seq + j] = real ? tokens[(size_t)i * MAX_TOKENS + j] : pad;
            mask[(size_t)i * seq + j] = real;
            types[(size_t)i * seq + j] = 0;
        }
    }
    wg_result failed = 0;
    wg_nn_errno e = set_inputs(n, seq, ids, mask, types, &failed);
    free(buf);
    if (e != WG_NN_SUCCESS) return failed;
    e = wg_nn_compute(g_ctx);
    if (e == WG_NN_UNSUPPORTED_OPERATION && g_n_inputs == 2)
        return wg_failed("wasi-nn compute failed: unsupported_operation (6): the encoder has an input beyond "
                         "input_ids and attention_mask that refused token_type_ids (INT64 [batch, seq]) as its "
                         "input 2");
    if (e != WG_NN_SUCCESS) return wg_nn_failed("compute", e);

    /* Output 0 is [n, seq, hidden] floats; hidden is not known ahead: grow the buffer until it fits. */
    uint64_t per_hidden = (uint64_t)cells * sizeof(float);
    uint64_t hidden = g_hidden ? g_hidden : HIDDEN_GUESS;
    for (;;) {
        uint64_t size = per_hidden * hidden;
        if (size > WG_MAX_RESULT_LEN) return wg_failed("the encoder's output 0 would be larger than 1 GiB");
        float *o = (float *)malloc((size_t)size);
        if (!o) return wg_failed("out of memory for the encoder's output: send fewer sentences at once");
        uint32_t written = 0;
        e = wg_nn_get_output(g_ctx, 0, o, (uint32_t)size, &written);
        if (e == WG_NN_SUCCESS) {
            if (written == 0 || written % per_hidden != 0) {
                free(o);
                wg_msg m;
                wg_msg_init(&m);
                wg_msg_str(&m, "the encoder's output 0 has ");
                wg_msg_u64(&m, written);
                wg_msg_str(&m, " bytes, not a multiple of 4 * batch * seq = ");
                wg_msg_u64(&m, per_hidden);
                wg_msg_str(&m, " (it must be FP32 [batch, seq, hidden])");
                return wg_failed(m.text);
            }
            *out = o;
            *floats = written / sizeof(float);
            g_hidden = (uint32_t)(written / per_hidden);
            return 0;
        }
        free(o);
        if (e != WG_NN_TOO_LARGE) return wg_nn_failed("get_output(0)", e);
        if (hidden >= MAX_HIDDEN)
            return wg_failed("wasi-nn get_output(0) failed: too_large (7): the encoder's output 0 is larger than "
                             "16384 floats per token, or than the gateway's tensor limit");
        hidden *= 2;
    }
}

/* Mean of each row's first counts[i] token vectors, L2-normalised, into the response (sentence-transformers'
 * Pooling with mean tokens, then Normalize: padding never counts, and a zero vector stays zero). */
static wg_result pool(wg_response *resp, uint32_t n, uint32_t seq, uint32_t hidden, const float *states,
                      const uint32_t *counts) {
    const uint32_t dims[2] = {n, hidden};
    float *emb = (float *)wg_response_reserve(resp, "embedding", WG_FP32, 2, dims, n * hidden * (uint32_t)sizeof(float));
    double *acc = (double *)malloc(hidden * sizeof(double));
    if (!emb || !acc) {
        free(acc);
        return wg_failed("out of memory for the embeddings: send fewer sentences at once");
    }
    for (uint32_t i = 0; i < n; i++) {
        memset(acc, 0, hidden * sizeof(double));
        const float *row = states + (size_t)i * seq * hidden;
        for (uint32_t j = 0; j < counts[i]; j++)
            for (uint32_t k = 0; k < hidden; k++) acc[k] += row[(size_t)j * hidden + k];
        double norm = 0;
        for (uint32_t k = 0; k < hidden; k++) {
            acc[k] /= counts[i]; /* at least 2: [CLS] and [SEP] */
            norm += acc[k] * acc[k];
        }
        norm = sqrt(norm);
        if (norm < 1e-12) norm = 1e-12; /* torch.nn.functional.normalize's eps */
        for (uint32_t k = 0; k < hidden; k++) emb[(size_t)i * hidden + k] = (float)(acc[k] / norm);
    }
    free(acc);
    return wg_response_finish(resp);
}

/* Tokenize the n rows, run the encoder on them as one batch, pool. `tokens` has MAX_TOKENS slots per row. */
static wg_result embed(wg_response *resp, uint32_t n, const char **text, const uint32_t *len, int32_t *tokens,
                       uint32_t *counts) {
    uint32_t seq = 0; /* the batch is as long as its longest sentence */
    for (uint32_t i = 0; i < n; i++) {
        int32_t c = tk_encode(g_vocab, text[i], len[i], tokens + (size_t)i * MAX_TOKENS, MAX_TOKENS);
        counts[i] = (uint32_t)c; /* never -1: split_rows checked the UTF-8, and MAX_TOKENS >= 2 */
        if (counts[i] > seq) seq = counts[i];
    }
    float *states = NULL;
    uint64_t floats = 0;
    wg_result r = encode_batch(n, seq, tokens, counts, tk_vocab_pad_id(g_vocab), &states, &floats);
    if (!r) r = pool(resp, n, seq, (uint32_t)(floats / ((uint64_t)n * seq)), states, counts);
    free(states);
    return r;
}

wg_result wg_handle(const wg_request *req, wg_response *resp) {
    const wg_tensor *input = NULL;
    wg_result r = check_request(req, &input);
    if (r) return r;
    uint32_t n = input->dims[0];
    if (n > MAX_ROWS) return wg_invalid("input \"text\" has more than 65536 rows: send fewer sentences at once");
    if ((uint64_t)n * 4 > input->data_len) /* every row takes at least its 4-byte length */
        return wg_invalid("input \"text\": BYTES data holds fewer elements than its shape says");

    const char **text = (const char **)malloc((size_t)n * sizeof *text);
    uint32_t *len = (uint32_t *)malloc((size_t)n * sizeof *len);
    int32_t *tokens = (int32_t *)malloc((size_t)n * MAX_TOKENS * sizeof *tokens);
    uint32_t *counts = (uint32_t *)malloc((size_t)n * sizeof *counts);
    if (!text || !len || !tokens || !counts)
        r = wg_failed("out of memory for a batch of this size: send fewer sentences at once");
    /* Bad input is the caller's (400) before anything is loaded; then the vocab and the model, once. */
    if (!r) r = split_rows(input, n, text, len);
    if (!r) r = ensure_vocab();
    if (!r) r = ensure_model();
    if (!r) r = embed(resp, n, text, len, tokens, counts);
    free(text);
    free(len);
    free(tokens);
    free(counts);
    return r;
}
