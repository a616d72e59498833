/*
 * files_escape: reads its own data file, then tries to write to its files and to reach past them, and reports
 * what WASI answered (case 1; HTTP 200). Pushed with one file, alias "data" (guest_modules/ABI.md, "Files":
 * the function's files are a read-only directory preopened at /files). Output "out" holds, in order:
 *
 *   0  errno of open("/files/data", O_RDONLY)                          (0: its own file opens)
 *   1  the bytes read from it
 *   2  errno of the same read made by a constructor, during _initialize (0: files are there at start)
 *   3  errno of open("/files/data", O_WRONLY)
 *   4  errno of open("/files/data", O_RDWR)
 *   5  errno of open("/files/new", O_WRONLY | O_CREAT)
 *   6  errno of write() on the descriptor opened read-only in 0
 *   7  errno of ftruncate() on that descriptor
 *   8  errno of unlink("/files/data")
 *   9  errno of rename("/files/data", "/files/renamed")
 *  10  errno of mkdir("/files/dir")
 *  11  errno of symlink("/etc/passwd", "/files/link")
 *  12  errno of utimensat() on /files/data                             (changing its times)
 *  13  errno of open("/files/../data", O_RDONLY)                       (".." out of the preopen)
 *  14  errno of open("/files/../../other", O_RDONLY)                   (towards other functions' files)
 *  15  errno of raw path_open(preopen, "../../../blobs/sha256")         (towards the store's blobs)
 *  16  errno of open("/files/secret", O_RDONLY)                        (another function's alias)
 *  17  errno of open("/etc/passwd", O_RDONLY)                          (an absolute path outside)
 *  18  1 if fd 3 is a preopened directory named "/files", else 0
 *  19  errno of fd_prestat_get(fd 4)                                   (EBADF: the only preopen is fd 3)
 *  20  the number of entries in /files besides "." and ".."           (only the function's own files)
 *
 * A successful open for writing (or any write that succeeds) is reported as 0 in its slot, so a sandbox that
 * let it through fails the test rather than hiding.
 */
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wasi/api.h>

static int32_t g_init_errno = -1;

__attribute__((constructor)) static void read_at_start(void) {
    FILE *f = fopen("/files/data", "rb");
    if (f == NULL) {
        g_init_errno = errno;
        return;
    }
    char buf[64];
    g_init_errno = fread(buf, 1, sizeof buf, f) > 0 ? 0 : -1;
    fclose(f);
}

static int32_t open_errno(const char *path, int flags) {
    errno = 0;
    int fd = open(path, flags, 0644);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    return errno;
}

static int32_t result_errno(int rc) { return rc == 0 ? 0 : errno; }

static wg_result hostile_misbehave(int32_t which, wg_response *resp) {
    if (which != 1) return hostile_unknown_case(which);
    int32_t out[21];
    static char buf[4096];

    errno = 0;
    int fd = open("/files/data", O_RDONLY);
    out[0] = fd >= 0 ? 0 : errno;
    ssize_t got = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
    out[1] = (int32_t)got;
    out[2] = g_init_errno;
    out[3] = open_errno("/files/data", O_WRONLY);
    out[4] = open_errno("/files/data", O_RDWR);
    out[5] = open_errno("/files/new", O_WRONLY | O_CREAT);
    errno = 0;
    out[6] = fd < 0 ? -1 : write(fd, "x", 1) == 1 ? 0 : errno;
    errno = 0;
    out[7] = fd >= 0 ? result_errno(ftruncate(fd, 0)) : -1;
    if (fd >= 0) close(fd);
    errno = 0;
    out[8] = result_errno(unlink("/files/data"));
    errno = 0;
    out[9] = result_errno(rename("/files/data", "/files/renamed"));
    errno = 0;
    out[10] = result_errno(mkdir("/files/dir", 0755));
    errno = 0;
    out[11] = result_errno(symlink("/etc/passwd", "/files/link"));
    errno = 0;
    out[12] = result_errno(utimensat(AT_FDCWD, "/files/data", NULL, 0));
    out[13] = open_errno("/files/../data", O_RDONLY);
    out[14] = open_errno("/files/../../other", O_RDONLY);
    __wasi_fd_t raw;
    out[15] = __wasi_path_open(3, 0, "../../../blobs/sha256", __WASI_OFLAGS_DIRECTORY, __WASI_RIGHTS_FD_READDIR, 0,
                               0, &raw);
    out[16] = open_errno("/files/secret", O_RDONLY);
    out[17] = open_errno("/etc/passwd", O_RDONLY);
    __wasi_prestat_t prestat;
    char name[16] = {0};
    out[18] = __wasi_fd_prestat_get(3, &prestat) == 0 && prestat.u.dir.pr_name_len == 6 &&
              __wasi_fd_prestat_dir_name(3, (uint8_t *)name, 6) == 0 && memcmp(name, "/files", 6) == 0;
    out[19] = __wasi_fd_prestat_get(4, &prestat);
    int32_t entries = -1;
    DIR *dir = opendir("/files");
    if (dir != NULL) {
        entries = 0;
        struct dirent *e;
        while ((e = readdir(dir)) != NULL)
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) entries++;
        closedir(dir);
    }
    out[20] = entries;
    return hostile_answer(resp, out, sizeof out / sizeof out[0]);
}
