/*
 * common.h - the request protocol every case-driven hostile fixture shares (see README.md).
 *
 * Input  "case" INT32 [1]   0: behave (answer how many requests this instance has served, this one
 *                              included); any other value: the misbehaviour hostile_misbehave() picks for it
 * Output "out"  INT32 [-1]  case 0: [served]; a fixture that reports what it observed answers with its values
 *
 * The served count is the observable for "the instance was discarded": it restarts at 1 on a new instance.
 * Include this in exactly one translation unit per fixture, which defines hostile_misbehave().
 */
#ifndef HOSTILE_COMMON_H
#define HOSTILE_COMMON_H

#define WASMGATE_MAIN
#include "wasmgate.h"

WG_SIGNATURE("{\"inputs\":[{\"name\":\"case\",\"datatype\":\"INT32\",\"shape\":[1]}],"
             "\"outputs\":[{\"name\":\"out\",\"datatype\":\"INT32\",\"shape\":[-1]}]}")

/** The fixture's misbehaviour for `which` (never 0). Return a wg_result, or trap, or never return. */
static wg_result hostile_misbehave(int32_t which, wg_response *resp);

static uint32_t hostile_served_;

/** Answer with `n` INT32 values as the output "out". */
static inline wg_result hostile_answer(wg_response *resp, const int32_t *values, uint32_t n) {
    const uint32_t dims[1] = {n};
    if (wg_response_add(resp, "out", WG_INT32, 1, dims, values, n * (uint32_t)sizeof(int32_t)) != 0)
        return wg_failed("out of memory while answering");
    return wg_response_finish(resp);
}

/** "unknown case N" as a status 1 (HTTP 400): the guest rejecting its input. */
static inline wg_result hostile_unknown_case(int32_t which) {
    wg_msg m;
    wg_msg_init(&m);
    wg_msg_str(&m, "unknown case ");
    wg_msg_i64(&m, which);
    return wg_invalid(m.text);
}

wg_result wg_handle(const wg_request *req, wg_response *resp) {
    hostile_served_++;
    const wg_tensor *c = wg_request_input(req, "case");
    if (c == NULL || c->dtype != WG_INT32 || c->data_len != sizeof(int32_t))
        return wg_invalid("expected one INT32 input \"case\" of shape [1]");
    int32_t which;
    memcpy(&which, c->data, sizeof which);
    if (which == 0) {
        int32_t served = (int32_t)hostile_served_;
        return hostile_answer(resp, &served, 1);
    }
    return hostile_misbehave(which, resp);
}

#endif /* HOSTILE_COMMON_H */
