/* bad_import: imports a host function outside WASI preview 1 and WASI-NN (a made-up `env.open_socket`).
 * Outcome: `wasm push` is refused ("import env.open_socket is not allowed") and the store is unchanged. */
#include "common.h"

__attribute__((import_module("env"), import_name("open_socket"))) int32_t open_socket(int32_t port);

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    int32_t fd = open_socket(which);
    return hostile_answer(resp, &fd, 1);
}
