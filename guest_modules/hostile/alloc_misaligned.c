/* alloc_misaligned: an `alloc` that returns a pointer inside its memory but 4 bytes off the 8-byte alignment the
 * ABI requires (guest_modules/ABI.md, "Exports"): the guest would read the request's INT64 and FP64 data
 * misaligned. Written against the raw ABI (no SDK). Outcome: HTTP 500 "alloc returned the misaligned buffer",
 * and the instance is discarded (every request gets a new one). */
#include <stdint.h>

static uint8_t g_buffer[1 << 16] __attribute__((aligned(8)));

__attribute__((export_name("alloc"))) uint32_t hostile_alloc(uint32_t size);
uint32_t hostile_alloc(uint32_t size) {
    (void)size;
    return (uint32_t)(uintptr_t)(g_buffer + 4);
}

__attribute__((export_name("handle"))) int64_t hostile_handle(uint32_t ptr, uint32_t len);
int64_t hostile_handle(uint32_t ptr, uint32_t len) {
    (void)ptr;
    (void)len;
    return 0; /* never called: the request is refused before it is written */
}
