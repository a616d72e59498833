/* big_function: one function with a body of about 50 KB (2,048 dependent volatile updates, unrolled by the
 * preprocessor). With the tests' WASMGATE_MAX_FUNCTION_BODY_BYTES=32768 (the default is 1 MiB; a 7 MB
 * function took two minutes and 5 GB to compile before the limit), `wasm push` is refused before anything
 * compiles (413, exit 1): "the module has a function of ... bytes, more than 32768 (setting
 * max_function_body_bytes)". */
#include "common.h"

static volatile int32_t g_state;

#define S1 g_state = g_state * 31 + 7;
#define S4 S1 S1 S1 S1
#define S16 S4 S4 S4 S4
#define S64 S16 S16 S16 S16
#define S256 S64 S64 S64 S64
#define S1024 S256 S256 S256 S256
#define S4096 S1024 S1024 S1024 S1024

__attribute__((noinline)) static int32_t churn(int32_t x) {
    g_state = x;
    S1024 S1024
    return g_state;
}

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    int32_t value = churn(which);
    return hostile_answer(resp, &value, 1);
}
