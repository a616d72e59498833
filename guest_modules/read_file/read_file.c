/*
 * read_file: answers with the contents of one of the function's data files, named by its alias.
 *
 * Input  "alias"    BYTES [1]  the alias a file was pushed under (`wasm push ... --file ALIAS=PATH`)
 * Output "contents" BYTES [1]  that file's bytes, whole
 *
 * The files are a read-only directory preopened at /files (WG_FILES_DIR; guest_modules/ABI.md, "Files"), so
 * reading one is plain libc: fopen("/files/ALIAS", "rb"). An alias that is not a name (1-128 letters, digits,
 * '.', '_', '-', starting and ending with a letter or digit, no "..") is refused before any path is built,
 * and a file the function was not pushed with is a 400 (status 1). See README.md.
 */
#define WASMGATE_MAIN
#include "wasmgate.h"

#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>

WG_SIGNATURE("{\"inputs\":[{\"name\":\"alias\",\"datatype\":\"BYTES\",\"shape\":[1]}],"
             "\"outputs\":[{\"name\":\"contents\",\"datatype\":\"BYTES\",\"shape\":[1]}]}")

#define MAX_ALIAS 128

static int is_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

/* The gateway's rule for aliases: a file name with no way out of the directory. */
static int valid_alias(const char *s, uint32_t n) {
    if (n < 1 || n > MAX_ALIAS || !is_alnum(s[0]) || !is_alnum(s[n - 1])) return 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!is_alnum(s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-') return 0;
        if (i > 0 && s[i] == '.' && s[i - 1] == '.') return 0;
    }
    return 1;
}

static wg_result read_failed(const char *what, const char *alias) {
    wg_msg m;
    wg_msg_init(&m);
    wg_msg_str(&m, what);
    wg_msg_str(&m, " " WG_FILES_DIR "/");
    wg_msg_str(&m, alias);
    wg_msg_str(&m, ": errno ");
    wg_msg_i64(&m, errno);
    return wg_failed(m.text);
}

wg_result wg_handle(const wg_request *req, wg_response *resp) {
    const wg_tensor *in = wg_request_input(req, "alias");
    uint32_t len;
    if (in == NULL || in->dtype != WG_BYTES || wg_tensor_numel(in) != 1 || in->data_len < 4)
        return wg_invalid("expected one BYTES input \"alias\" of shape [1]");
    memcpy(&len, in->data, sizeof len);
    const char *name = (const char *)in->data + 4;
    if (len != in->data_len - 4 || !valid_alias(name, len))
        return wg_invalid("\"alias\" must be a file alias: 1-128 letters, digits, '.', '_' or '-'");

    char path[sizeof WG_FILES_DIR + 1 + MAX_ALIAS];
    memcpy(path, WG_FILES_DIR "/", sizeof WG_FILES_DIR);
    memcpy(path + sizeof WG_FILES_DIR, name, len);
    path[sizeof WG_FILES_DIR + len] = '\0';
    const char *alias = path + sizeof WG_FILES_DIR;

    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        if (errno != ENOENT) return read_failed("cannot open", alias);
        wg_msg m;
        wg_msg_init(&m);
        wg_msg_str(&m, "no file \"");
        wg_msg_str(&m, alias);
        wg_msg_str(&m, "\" was pushed with this function");
        return wg_invalid(m.text);
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size < 0 || (uint64_t)st.st_size > WG_MAX_RESULT_LEN - 4) {
        fclose(f);
        return read_failed("cannot size", alias);
    }
    uint32_t size = (uint32_t)st.st_size;
    const uint32_t dims[1] = {1};
    uint8_t *out = wg_response_reserve(resp, "contents", WG_BYTES, 1, dims, 4 + size);
    if (out == NULL) {
        fclose(f);
        return wg_failed("out of memory for the file's contents");
    }
    memcpy(out, &size, sizeof size); /* BYTES: a u32 length, then the bytes */
    size_t got = fread(out + 4, 1, size, f);
    fclose(f);
    if (got != size) return read_failed("cannot read", alias);
    return wg_response_finish(resp);
}
