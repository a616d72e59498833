/* infinite_loop: case 1 spins forever in `handle`. Outcome: the epoch deadline interrupts it (HTTP 504). */
#include "common.h"

static volatile uint32_t g_spins;

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    (void)resp;
    if (which != 1) return hostile_unknown_case(which);
    for (;;) g_spins++; /* volatile: the loop cannot be optimised away */
}
