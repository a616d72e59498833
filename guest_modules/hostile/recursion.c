/* recursion: case 1 recurses without bound. Outcome: wasmtime's stack limit (max_wasm_stack_bytes) traps with
 * a stack overflow (HTTP 500). The call goes through a volatile function pointer so the compiler can neither
 * turn it into a loop nor fold it away, and it keeps no locals in linear memory, so it is the native stack,
 * not the 64 KiB shadow stack, that runs out. */
#include "common.h"

static int32_t descend(int32_t depth);
static int32_t (*volatile g_next)(int32_t) = descend;

static int32_t descend(int32_t depth) { return g_next(depth + 1) ^ depth; }

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    if (which != 1) return hostile_unknown_case(which);
    int32_t r = g_next(0);
    return hostile_answer(resp, &r, 1); /* never reached */
}
