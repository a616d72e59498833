/*
 * abi_oob: `handle` results that break the ABI's own contract (guest_modules/ABI.md "One call").
 *
 *   case  result                                                                  outcome
 *    1    status 0, pointer 8 bytes before the end of memory, length 100          500 "outside its memory"
 *    2    status 0, a valid pointer with length 2^30 - 1, more than the memory    500 "outside its memory"
 *    3    status 2, a message of 2^30 - 1 bytes starting near the end of memory   500 "outside its memory"
 *    4    status 0, a buffer in memory that is not a WGT1 response                500 "malformed response"
 *    5    status 3, which the ABI leaves undefined                                500 "undefined status 3"
 *    6    a well-formed response whose "out" is FP32, declared INT32              500 "as FP32; its signature"
 *    7    a well-formed response whose "out" has rank 2, declared rank 1         500 "with shape [1, 1]"
 *    8    a well-formed response with an output its signature does not declare   500 "the undeclared output"
 * Cases 5-8 answer what the metadata says cannot be answered: the instance is discarded.
 */
#include "common.h"

static uint32_t memory_end(void) { return (uint32_t)__builtin_wasm_memory_size(0) * 65536u; }

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
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
    case 5:
        return wg_status(3, garbage, sizeof garbage);
    case 6: {
        const uint32_t dims[1] = {1};
        const float value[1] = {1.0f};
        if (wg_response_add(resp, "out", WG_FP32, 1, dims, value, sizeof value) != 0) return wg_failed("no memory");
        return wg_response_finish(resp);
    }
    case 7: {
        const uint32_t dims[2] = {1, 1};
        const int32_t value[1] = {1};
        if (wg_response_add(resp, "out", WG_INT32, 2, dims, value, sizeof value) != 0) return wg_failed("no memory");
        return wg_response_finish(resp);
    }
    case 8: {
        const uint32_t dims[1] = {1};
        const int32_t value[1] = {1};
        if (wg_response_add(resp, "secret", WG_INT32, 1, dims, value, sizeof value) != 0) return wg_failed("no memory");
        return wg_response_finish(resp);
    }
    }
    return hostile_unknown_case(which);
}
