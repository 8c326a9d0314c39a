/* sandbox-exec: the first step of a sandboxed action's launch chain (workers/sandbox.py).
 *
 *   sandbox-exec NOFILE FSIZE AS NPROC UID GID [CGROUP_PROCS_FILE...] -- BWRAP [ARG...]
 *
 * Sets the per-process rlimits (soft = hard, so the action cannot raise them; core files off;
 * AS and NPROC only where given, "-" otherwise), and, where UID and GID are given ("-"
 * otherwise), changes to them with no supplementary groups and no capabilities in any set; then
 * execs BWRAP with an empty environment. One small static program instead of `sh` (rlimits,
 * cgroups) and `setpriv` (uid): an exec less per action, and the cheapest kind.
 *
 * The cgroups named are joined while bwrap sets the sandbox up, not before: moving a process
 * into a cgroup waits for an RCU grace period (the kernel's cgroup_threadgroup_rwsem, unless
 * the hierarchy is mounted with favordynmods), ~10 ms here, as long as the rest of the
 * launch. A helper forked before the uid changes moves this process (bwrap, once exec'd) at
 * once, reads bwrap's --info-fd for the pid of the sandbox's first process, moves it too, and
 * only then writes to bwrap's --block-fd, which bwrap reads before it starts anything in the
 * sandbox: nothing the action runs is ever outside its cgroups. If a move fails, the helper
 * kills both instead (bwrap goes on when --block-fd closes unwritten).
 *
 * Exit 125 when a step fails (the message on stderr), 127 when BWRAP is missing, 126 when it
 * cannot run, as a shell would. Built by workers/sandbox_exec.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <signal.h>
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

/* Writes `pid` into every cgroup.procs file; 0 on success. */
static int join(long long pid, char **procs, int count) {
    char text[32];
    int length = snprintf(text, sizeof text, "%lld", pid);
    for (int i = 0; i < count; i++) {
        int fd = open(procs[i], O_WRONLY | O_CLOEXEC);
        int ok = fd >= 0 && write(fd, text, length) == length;
        if (!ok)
            fail("cannot join", procs[i]);
        if (fd >= 0)
            close(fd);
        if (!ok)
            return -1;
    }
    return 0;
}

/* The sandbox's first process, as bwrap's --info-fd names it ("child-pid"), or -1. */
static long long child_pid(int info, char *text, size_t size) {
    size_t used = 0;
    const char *key = "\"child-pid\":";
    while (used < size - 1) {
        ssize_t got = read(info, text + used, size - 1 - used);
        if (got <= 0)
            return -1;
        used += (size_t)got;
        text[used] = '\0';
        char *at = strstr(text, key);
        if (at == NULL)
            continue;
        char *digits = at + strlen(key);
        while (*digits == ' ')
            digits++;
        char *end = digits;
        while (*end >= '0' && *end <= '9')
            end++;
        if (end > digits && *end != '\0') /* the whole number has come */
            return strtoll(digits, NULL, 10);
    }
    return -1;
}

/* The helper: moves bwrap (its parent) at once, and the sandbox's first process as soon as
 * bwrap names it, into every cgroup, then lets the sandbox go on. Never returns. */
static void join_later(int info, int block, pid_t bwrap, char **procs, int count) {
    char text[4096];
    long long child = -1;
    int ok = join(bwrap, procs, count) == 0;
    if (ok) {
        child = child_pid(info, text, sizeof text);
        if (child <= 0)
            dprintf(2, "sandbox-exec: bwrap named no child-pid on --info-fd\n");
        ok = child > 0 && join(child, procs, count) == 0 && write(block, "x", 1) == 1;
    }
    if (!ok) {
        if (child > 0)
            kill((pid_t)child, SIGKILL);
        kill(bwrap, SIGKILL);
        _exit(125);
    }
    /* Read to the end: bwrap writes the rest of its info after the pid, and a pipe closed
     * under it would end it by SIGPIPE. */
    while (read(info, text, sizeof text) > 0)
        ;
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc < 9) {
        dprintf(2, "usage: sandbox-exec NOFILE FSIZE AS NPROC UID GID [PROCS...] -- BWRAP...\n");
        return 125;
    }
    long long nofile = number(argv[1]), fsize = number(argv[2]), as = number(argv[3]);
    long long nproc = number(argv[4]), uid = number(argv[5]), gid = number(argv[6]);
    int first_procs = 7, i = 7;
    while (i < argc && strcmp(argv[i], "--") != 0)
        i++;
    int procs = i - first_procs;
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
    /* bwrap's argv with "--info-fd N --block-fd M" after its name when there are cgroups. */
    char **program = argv + i;
    char info_arg[16], block_arg[16];
    char **with_fds = calloc((size_t)(argc - i + 5), sizeof *with_fds);
    if (with_fds == NULL)
        return fail("calloc", "argv");
    if (procs > 0) {
        int info[2], block[2];
        if (pipe2(info, O_CLOEXEC) != 0 || pipe2(block, O_CLOEXEC) != 0)
            return fail("pipe", "");
        pid_t self = getpid();
        pid_t helper = fork();
        if (helper < 0)
            return fail("fork", "helper");
        if (helper == 0) {
            close(info[1]);
            close(block[0]);
            join_later(info[0], block[1], self, argv + first_procs, procs);
        }
        close(info[0]);
        close(block[1]);
        /* bwrap keeps these two across its exec. */
        if (fcntl(info[1], F_SETFD, 0) != 0 || fcntl(block[0], F_SETFD, 0) != 0)
            return fail("fcntl", "");
        snprintf(info_arg, sizeof info_arg, "%d", info[1]);
        snprintf(block_arg, sizeof block_arg, "%d", block[0]);
        int k = 0;
        with_fds[k++] = argv[i];
        with_fds[k++] = "--info-fd";
        with_fds[k++] = info_arg;
        with_fds[k++] = "--block-fd";
        with_fds[k++] = block_arg;
        for (int j = i + 1; j < argc; j++)
            with_fds[k++] = argv[j];
        with_fds[k] = NULL;
        program = with_fds;
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
    execve(program[0], program, no_env);
    int code = errno == ENOENT ? 127 : 126;
    dprintf(2, "cannot run '%s': %s\n", program[0], strerror(errno));
    return code;
}
