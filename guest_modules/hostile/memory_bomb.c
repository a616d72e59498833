/* memory_bomb: case 1 allocates and touches 1 MiB blocks until malloc fails at the instance's memory limit
 * (memory.grow returns -1), then aborts like a C program out of memory. Outcome: a trap (HTTP 500), the
 * instance and its full memory are dropped. */
#include "common.h"

#define BLOCK (1u << 20)

/* Every block escapes through this volatile pointer; without it the compiler may drop an unused malloc and
 * its memset, and the loop would spin until the deadline instead of exhausting memory. */
static void *volatile g_sink;

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    (void)resp;
    if (which != 1) return hostile_unknown_case(which);
    for (;;) {
        void *p = malloc(BLOCK);
        if (p == NULL) abort(); /* wasi-libc's abort is `unreachable` */
        memset(p, 0xA5, BLOCK); /* touch every page, so the memory is really committed */
        g_sink = p;
    }
}
