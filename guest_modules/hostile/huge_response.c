/* huge_response: case 1 answers a 3 MiB INT32 tensor (786,432 values), well inside its memory limit. As JSON
 * text that is up to 9.4 MB, past the tests' 4 MiB response limit (WASMGATE_MAX_RESPONSE_BYTES): the gateway
 * refuses it before encoding anything (HTTP 500 naming the setting and pointing at binary outputs), and keeps
 * the instance, whose answer was well-formed. Asked for in binary, the same answer fits and is served. */
#include <stdlib.h>

#include "common.h"

#define HUGE_VALUES (3u * 1024u * 1024u / 4u)

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    if (which != 1) return hostile_unknown_case(which);
    int32_t *values = malloc(HUGE_VALUES * sizeof(int32_t));
    if (values == NULL) return wg_failed("out of memory");
    for (uint32_t i = 0; i < HUGE_VALUES; i++) values[i] = (int32_t)i;
    wg_result result = hostile_answer(resp, values, HUGE_VALUES);
    free(values);
    return result;
}
