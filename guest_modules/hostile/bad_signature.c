/* bad_signature: a `signature` export that traps. The host calls it once at push, after `_initialize`, under the
 * deadline. Outcome: `wasm push` refused (400, exit 1): "the function's signature() failed: the function trapped
 * in signature: unreachable"; the store is unchanged. Written against the raw ABI (the SDK's signature cannot
 * trap). */
#include <stdint.h>

__attribute__((export_name("signature"))) uint32_t hostile_signature(void);
uint32_t hostile_signature(void) { __builtin_trap(); }

static uint8_t g_buffer[1 << 16] __attribute__((aligned(8)));

__attribute__((export_name("alloc"))) uint32_t hostile_alloc(uint32_t size);
uint32_t hostile_alloc(uint32_t size) {
    (void)size;
    return (uint32_t)(uintptr_t)g_buffer;
}

__attribute__((export_name("handle"))) int64_t hostile_handle(uint32_t ptr, uint32_t len);
int64_t hostile_handle(uint32_t ptr, uint32_t len) {
    (void)ptr;
    (void)len;
    return 0;
}
