/* sandbox-exec: the first step of a sandboxed action's launch chain (workers/sandbox.py).
 *
 *   sandbox-exec NOFILE FSIZE AS NPROC UID GID [CGROUP_PROCS_FILE...] -- PROGRAM [ARG...]
 *
 * Joins every cgroup whose cgroup.procs file is named, sets the per-process rlimits (soft =
 * hard, so the action cannot raise them; core files off; AS and NPROC only where given, "-"
 * otherwise), and, where UID and GID are given ("-" otherwise), changes to them with no
 * supplementary groups and no capabilities in any set; then execs PROGRAM with an empty
 * environment. One small static program instead of `sh` (cgroups, rlimits) and `setpriv` (uid):
 * an exec less per action, and the cheapest kind. It is built by workers/sandbox_exec.py.
 *
 * Exit 125 when a step fails (the message on stderr), 127 when PROGRAM is missing, 126 when it
 * cannot run, as a shell would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

static int fail(const char *what, const char *arg) {
    dprintf(2, "sandbox-exec: %s %s: %s\n", what, arg, strerror(errno));
    return 125;
}

/* A decimal number, or -1 for "-"; exits on anything else. */
static long long number(const char *text) {
    char *end;
    if (strcmp(text, "-") == 0)
        return -1;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno || *text == '\0' || *end != '\0' || value < 0) {
        dprintf(2, "sandbox-exec: not a number: %s\n", text);
        exit(125);
    }
    return value;
}

static int limit(int resource, long long value, const char *name) {
    struct rlimit r = {(rlim_t)value, (rlim_t)value};
    if (value >= 0 && setrlimit(resource, &r) != 0)
        return fail("setrlimit", name);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 9) {
        dprintf(2, "usage: sandbox-exec NOFILE FSIZE AS NPROC UID GID [PROCS...] -- PROGRAM...\n");
        return 125;
    }
    long long nofile = number(argv[1]), fsize = number(argv[2]), as = number(argv[3]);
    long long nproc = number(argv[4]), uid = number(argv[5]), gid = number(argv[6]);
    int i = 7;
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%d", (int)getpid());
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        int fd = open(argv[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, pid, n) != n)
            return fail("cannot join", argv[i]);
        close(fd);
    }
    if (++i >= argc) {
        dprintf(2, "sandbox-exec: no program after --\n");
        return 125;
    }
    if (limit(RLIMIT_NOFILE, nofile, "RLIMIT_NOFILE") || limit(RLIMIT_FSIZE, fsize, "RLIMIT_FSIZE") ||
        limit(RLIMIT_CORE, 0, "RLIMIT_CORE") || limit(RLIMIT_AS, as, "RLIMIT_AS") ||
        limit(RLIMIT_NPROC, nproc, "RLIMIT_NPROC"))
        return 125;
    if ((uid < 0) != (gid < 0)) {
        dprintf(2, "sandbox-exec: UID and GID go together\n");
        return 125;
    }
    if (uid >= 0) {
        if (setgroups(0, NULL) != 0)
            return fail("setgroups", "[]");
        if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0)
            return fail("setresgid", argv[6]);
        if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0)
            return fail("setresuid", argv[5]);
        /* Leaving uid 0 clears the permitted, effective and ambient sets; the inheritable one
         * is emptied here (what `setpriv --inh-caps=-all` did). */
        struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct data[2];
        memset(data, 0, sizeof data);
        if (syscall(SYS_capset, &header, data) != 0)
            return fail("capset", "none");
    }
    char *no_env[] = {NULL};
    execve(argv[i], argv + i, no_env);
    int code = errno == ENOENT ? 127 : 126;
    dprintf(2, "cannot run '%s': %s\n", argv[i], strerror(errno));
    return code;
}
