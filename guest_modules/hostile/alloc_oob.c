/* alloc_oob: an `alloc` that returns a pointer near the top of the 4 GiB address space, far outside its
 * memory. Written against the raw ABI (no SDK, no signature): the host must refuse to write the request there.
 * Outcome: HTTP 500 "alloc returned an invalid buffer", and the instance is discarded. */
#include <stdint.h>

__attribute__((export_name("alloc"))) uint32_t hostile_alloc(uint32_t size);
uint32_t hostile_alloc(uint32_t size) {
    (void)size;
    return 0xFFFFFF00u;
}

__attribute__((export_name("handle"))) int64_t hostile_handle(uint32_t ptr, uint32_t len);
int64_t hostile_handle(uint32_t ptr, uint32_t len) {
    (void)ptr;
    (void)len;
    return 0; /* never called: the request cannot be written */
}
