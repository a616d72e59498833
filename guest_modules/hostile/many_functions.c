/* many_functions: 4,096 distinct functions, reachable through a table so the linker keeps them all. With the
 * tests' WASMGATE_MAX_MODULE_FUNCTIONS=2000 (the default is 100,000; a module of 200,000 tiny functions took
 * half a minute and a gigabyte to compile before the limit), `wasm push` is refused before anything compiles
 * (413, exit 1): "the module defines ... functions, more than 2000 (setting max_module_functions)". */
#include "common.h"

#define F1(n) __attribute__((noinline)) static int32_t f##n(int32_t x) { return x * (n) + 1; }
#define F4(n) F1(n##0) F1(n##1) F1(n##2) F1(n##3)
#define F16(n) F4(n##0) F4(n##1) F4(n##2) F4(n##3)
#define F64(n) F16(n##0) F16(n##1) F16(n##2) F16(n##3)
#define F256(n) F64(n##0) F64(n##1) F64(n##2) F64(n##3)
#define F1024(n) F256(n##0) F256(n##1) F256(n##2) F256(n##3)
F1024(10) F1024(11) F1024(12) F1024(13)

#define R1(n) f##n,
#define R4(n) R1(n##0) R1(n##1) R1(n##2) R1(n##3)
#define R16(n) R4(n##0) R4(n##1) R4(n##2) R4(n##3)
#define R64(n) R16(n##0) R16(n##1) R16(n##2) R16(n##3)
#define R256(n) R64(n##0) R64(n##1) R64(n##2) R64(n##3)
#define R1024(n) R256(n##0) R256(n##1) R256(n##2) R256(n##3)
static int32_t (*const g_functions[])(int32_t) = {R1024(10) R1024(11) R1024(12) R1024(13)};

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    int32_t value = g_functions[(uint32_t)which % (sizeof g_functions / sizeof g_functions[0])](which);
    return hostile_answer(resp, &value, 1);
}
