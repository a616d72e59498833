/* init_loop: a constructor that never returns, so the reactor's `_initialize` loops. Outcome: `wasm push` is
 * refused ("the function failed to start: ... deadline ... in _initialize") and the store is unchanged. */
#include "common.h"

static volatile int g_forever = 1;

__attribute__((constructor)) static void spin_in_initialize(void) {
    while (g_forever) {
    }
}

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    (void)resp;
    return hostile_unknown_case(which);
}
