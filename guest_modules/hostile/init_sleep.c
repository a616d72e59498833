/* init_sleep: a constructor that sleeps 20 s, so the reactor's `_initialize` waits in poll_oneoff. Outcome:
 * `wasm push` is refused at once ("the function failed to start: ... deadline ... in _initialize, in
 * poll_oneoff ..."), not after 20 s, and the store is unchanged. */
#include <unistd.h>

#include "common.h"

__attribute__((constructor)) static void sleep_in_initialize(void) { sleep(20); }

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    (void)resp;
    return hostile_unknown_case(which);
}
