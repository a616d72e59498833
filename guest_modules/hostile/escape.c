/*
 * escape: tries to reach outside the sandbox and reports what WASI answered (case 1; HTTP 200). Output "out"
 * holds, in order:
 *
 *   0  errno of open("/etc/passwd", O_RDONLY)                                  (wasi-libc, no preopens)
 *   1  errno of open("/tmp/wasmgate-hostile-escape", O_WRONLY | O_CREAT)       (wasi-libc)
 *   2  errno of open("wasmgate-hostile-escape", O_WRONLY | O_CREAT)            (relative to the host's cwd?)
 *   3  errno of path_open(fd 3, "etc/passwd")                                  (raw: fd 3 would be a preopen)
 *   4  errno of fd_prestat_get(fd 3)                                           (raw: is there a preopen?)
 *   5  the number of environment variables (environ_sizes_get)
 *   6  1 if getenv("PATH") or getenv("HOME") returned something, else 0
 *   7  the number of arguments (args_sizes_get)
 *   8  errno of sock_accept(fd 3)                                               (raw: a pre-opened socket?)
 *   9  errno of sock_recv(fd 0)                                                 (stdin is not a socket)
 *  10  errno of sock_send(fd 1)                                                 (stdout is not a socket)
 *
 * A successful open is reported as 0 in its slot (and the descriptor closed), so a sandbox that let it
 * through fails the test rather than hiding.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <wasi/api.h>

static int32_t open_errno(const char *path, int flags) {
    errno = 0;
    int fd = open(path, flags, 0644);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    return errno;
}

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    if (which != 1) return hostile_unknown_case(which);
    int32_t out[11];
    __wasi_fd_t fd;
    __wasi_prestat_t prestat;
    __wasi_size_t count, bytes, moved;
    __wasi_roflags_t roflags;
    static uint8_t buf[16];
    __wasi_iovec_t iov = {buf, sizeof buf};
    __wasi_ciovec_t ciov = {buf, sizeof buf};

    out[0] = open_errno("/etc/passwd", O_RDONLY);
    out[1] = open_errno("/tmp/wasmgate-hostile-escape", O_WRONLY | O_CREAT);
    out[2] = open_errno("wasmgate-hostile-escape", O_WRONLY | O_CREAT);
    out[3] = __wasi_path_open(3, 0, "etc/passwd", 0, __WASI_RIGHTS_FD_READ, 0, 0, &fd);
    out[4] = __wasi_fd_prestat_get(3, &prestat);
    out[5] = __wasi_environ_sizes_get(&count, &bytes) == 0 ? (int32_t)count : -1;
    out[6] = getenv("PATH") != NULL || getenv("HOME") != NULL;
    out[7] = __wasi_args_sizes_get(&count, &bytes) == 0 ? (int32_t)count : -1;
    out[8] = __wasi_sock_accept(3, 0, &fd);
    out[9] = __wasi_sock_recv(0, &iov, 1, 0, &moved, &roflags);
    out[10] = __wasi_sock_send(1, &ciov, 1, 0, &moved);
    return hostile_answer(resp, out, sizeof out / sizeof out[0]);
}
