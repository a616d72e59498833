/*
 * abi_oob: `handle` results that break the ABI's own contract (guest_modules/ABI.md "One call").
 *
 *   case  result                                                                  outcome
 *    1    status 0, pointer 8 bytes before the end of memory, length 100          500 "outside its memory"
 *    2    status 0, a valid pointer with length 2^30 - 1, more than the memory    500 "outside its memory"
 *    3    status 2, a message of 2^30 - 1 bytes starting near the end of memory   500 "outside its memory"
 *    4    status 0, a buffer in memory that is not a WGT1 response                500 "malformed response"
 */
#include "common.h"

static uint32_t memory_end(void) { return (uint32_t)__builtin_wasm_memory_size(0) * 65536u; }

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    (void)resp;
    static const char garbage[32] = "this is not a WGT1 response";
    switch (which) {
    case 1:
        return wg_status(WG_STATUS_OK, (const void *)(uintptr_t)(memory_end() - 8), 100);
    case 2:
        return wg_status(WG_STATUS_OK, garbage, WG_MAX_RESULT_LEN);
    case 3:
        return wg_status(WG_STATUS_FAILED, (const void *)(uintptr_t)(memory_end() - 16), WG_MAX_RESULT_LEN);
    case 4:
        return wg_status(WG_STATUS_OK, garbage, sizeof garbage);
    }
    return hostile_unknown_case(which);
}
