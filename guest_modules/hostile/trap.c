/* trap: case 1 executes `unreachable` in the middle of `handle`, after it has begun its response. Outcome: a
 * trap (HTTP 500) and the instance is discarded. */
#include "common.h"

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    if (which != 1) return hostile_unknown_case(which);
    const uint32_t dims[1] = {1};
    wg_response_reserve(resp, "out", WG_INT32, 1, dims, 4); /* half-built state the trap leaves behind */
    __builtin_trap();
}
