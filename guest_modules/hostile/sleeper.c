/* sleeper: waits the host must bound, and exits the host must explain.
 *   case 1: sleep(30) (poll_oneoff with a 30 s clock): 504 at once, past its deadline "in poll_oneoff, asked to
 *           sleep 30000 ms"; discarded. The worker is never held for the 30 s.
 *   case 2: exit(3) (proc_exit): 500 "the function exited in handle: proc_exit(3)"; discarded.
 *   case 3: random_get into 100,000,000 bytes, past WASI's limit on one call: 500 naming WASI's cause; discarded.
 *   case 4: sleep(1), within the default 2 s deadline: 200 after a second (bench/neighbours.py; with the tests'
 *           200 ms deadline it is a 504 like case 1).
 */
#include <stdlib.h>
#include <unistd.h>

#include "common.h"

__attribute__((import_module("wasi_snapshot_preview1"), import_name("random_get")))
int32_t sleeper_random_get(uint8_t *buf, uint32_t len);

static uint8_t g_buf[16];

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    (void)resp;
    switch (which) {
    case 1:
        sleep(30);
        return wg_failed("slept through its deadline");
    case 2:
        exit(3);
    case 3:
        sleeper_random_get(g_buf, 100000000u);
        return wg_failed("random_get returned");
    case 4: {
        sleep(1);
        const int32_t slept[1] = {1};
        return hostile_answer(resp, slept, 1);
    }
    default:
        return hostile_unknown_case(which);
    }
}
