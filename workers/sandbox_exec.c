/* sandbox-exec: the first step of a sandboxed action's launch chain (workers/sandbox.py).
 *
 *   sandbox-exec NOFILE FSIZE AS NPROC UID GID NETNS MNTNS -- BWRAP [ARG...]
 *   sandbox-exec --standby CGROUP_PROCS_FILE...
 *   sandbox-exec --netns
 *   sandbox-exec --mntns MOUNTPOINT...
 *
 * Where NETNS is given ("-" otherwise: the action's own namespace or the host's, as bwrap is
 * told), joins that network namespace (a /proc/PID/ns/net path) while still root, and where
 * MNTNS is, that mount namespace (a /proc/PID/ns/mnt path, one --mntns holds); sets the
 * per-process rlimits (soft = hard, so the action cannot raise them; core files off; AS and
 * NPROC only where given, "-" otherwise), and, where UID and GID are given ("-" otherwise),
 * changes to them with no supplementary groups and no capabilities in any set; then execs
 * BWRAP with an empty environment. One small static program instead of `sh` (rlimits,
 * cgroups) and `setpriv` (uid): an exec less per action, and the cheapest kind.
 *
 * --standby: joins the cgroups named, then waits for the rest on stdin: NUL-terminated fields
 * STDOUT STDERR NOFILE FSIZE AS NPROC UID GID NETNS MNTNS -- BWRAP [ARG...], opens STDOUT and
 * STDERR (stdin becomes /dev/null) and goes on as above, except that BWRAP runs as its child:
 * this process, by then with the sandbox's uid and no capability, stays to reap it and, as
 * their child subreaper, every process of the action orphaned meanwhile, and exits as BWRAP did
 * once none is left. bwrap exits as soon as the command has, before its own init (pid 1 of the
 * sandbox) is reaped; that init would otherwise go to the host's init, and until reaped count
 * in the cgroup's pids.current, the limit of the next action lent the same cgroup
 * (workers/cgroups.py). Moving a process into a cgroup waits for an RCU grace period (the
 * kernel's cgroup_threadgroup_rwsem), ~10 ms on the hosts measured: a worker starts the next
 * action's sandbox-exec, in the next action's cgroups, while the current one runs, so that wait
 * is not an action's. It exits quietly when stdin closes with nothing on it.
 *
 * --netns: holds a network namespace of its own with only `lo`, up, for the worker to lend to
 * actions one at a time (NETNS above): prints "ready" once it exists, then waits for stdin to
 * close (the worker ending it, or dying) and exits. Made by root, the namespace belongs to the
 * host's user namespace, so an action in it has no capability over it. Its sysctls keep a new
 * namespace's defaults, as in one bwrap makes (ports below 1024 and ping sockets refused).
 *
 * --mntns: holds a mount namespace of its own, a copy of the host's less the mounts at each
 * MOUNTPOINT (each detached with what is mounted below it, as `umount -l`): prints "ready" once
 * it is made, then waits for stdin to close, as --netns does. bwrap reads the whole mount
 * table again for each mount it makes (~15 per action), so an action started from a namespace
 * without the host's /sys, cgroup and other mounts it never uses costs less; nothing of that
 * namespace but what bwrap binds is in the sandbox (bwrap detaches the rest).
 *
 * Exit 125 when a step fails (the message on stderr), 127 when BWRAP is missing, 126 when it
 * cannot run, as a shell would. Built by workers/sandbox_exec.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
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

/* Joins the namespace at `path` unless it is "-"; 0 on success. Joining a mount namespace
 * moves the root and working directory to its root; every path used after is absolute. */
static int join_ns(const char *path, int type) {
    if (strcmp(path, "-") == 0)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail("cannot open", path) != 0;
    int failed = setns(fd, type) != 0;
    if (failed)
        fail("setns", path);
    close(fd);
    return failed;
}

/* Waits for every child, adopted ones too, until none is left; then ends as `child` did: its
 * exit status, or killed by the same signal. */
static int reap_all(pid_t child) {
    int status = 125 << 8;
    for (;;) {
        int got_status;
        pid_t got = waitpid(-1, &got_status, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            break; /* ECHILD: none left */
        if (got == child)
            status = got_status;
    }
    if (WIFSIGNALED(status)) {
        signal(WTERMSIG(status), SIG_DFL);
        kill(getpid(), WTERMSIG(status));
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 125;
}

/* The launch proper, from NOFILE on (see the top); returns only on failure, or with `reap` (the
 * standby's launch) BWRAP's exit status once every process under this one is reaped. */
static int launch(int argc, char **argv, int reap) {
    if (argc < 10) {
        dprintf(2, "usage: sandbox-exec NOFILE FSIZE AS NPROC UID GID NETNS MNTNS -- BWRAP...\n");
        return 125;
    }
    long long nofile = number(argv[0]), fsize = number(argv[1]), as = number(argv[2]);
    long long nproc = number(argv[3]), uid = number(argv[4]), gid = number(argv[5]);
    const char *netns = argv[6], *mntns = argv[7];
    if (strcmp(argv[8], "--") != 0) {
        dprintf(2, "sandbox-exec: -- expected after UID GID NETNS MNTNS\n");
        return 125;
    }
    char **program = argv + 9;
    /* First: joining a namespace takes root, and a small RLIMIT_NOFILE could refuse the open.
     * The network one first: its path is under /proc, which the mount namespace keeps too. */
    if (join_ns(netns, CLONE_NEWNET) || join_ns(mntns, CLONE_NEWNS))
        return 125;
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
            return fail("setresgid", argv[5]);
        if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0)
            return fail("setresuid", argv[4]);
        /* Leaving uid 0 clears the permitted, effective and ambient sets; the inheritable one
         * is emptied here (what `setpriv --inh-caps=-all` did). */
        struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct data[2];
        memset(data, 0, sizeof data);
        if (syscall(SYS_capset, &header, data) != 0)
            return fail("capset", "none");
    }
    if (reap) {
        /* Not inherited by the child: bwrap's init, orphaned when bwrap exits, comes here. */
        if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
            return fail("prctl", "PR_SET_CHILD_SUBREAPER");
        pid_t child = fork();
        if (child < 0)
            return fail("fork", program[0]);
        if (child > 0)
            return reap_all(child);
    }
    char *no_env[] = {NULL};
    execve(program[0], program, no_env);
    int code = errno == ENOENT ? 127 : 126;
    dprintf(2, "cannot run '%s': %s\n", program[0], strerror(errno));
    if (reap)
        _exit(code);
    return code;
}

/* Everything on stdin, split at NULs into a NULL-terminated list; its length in *count. */
static char **read_fields(int *count) {
    size_t size = 0, capacity = 1 << 16;
    char *text = malloc(capacity);
    for (;;) {
        if (text == NULL)
            return NULL;
        if (size == capacity) {
            capacity *= 2;
            text = realloc(text, capacity);
            continue;
        }
        ssize_t got = read(0, text + size, capacity - size);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return NULL;
        if (got == 0)
            break;
        size += (size_t)got;
    }
    int n = 0;
    for (size_t i = 0; i < size; i++)
        n += text[i] == '\0';
    char **fields = calloc((size_t)n + 1, sizeof *fields);
    if (fields == NULL)
        return NULL;
    size_t start = 0;
    for (int k = 0; k < n; k++) {
        fields[k] = text + start;
        start += strlen(text + start) + 1;
    }
    *count = n;
    return fields;
}

static int standby(int argc, char **argv) {
    if (join(getpid(), argv, argc) != 0)
        return 125;
    int count = 0;
    char **fields = read_fields(&count);
    if (fields == NULL)
        return fail("read", "stdin");
    if (count == 0)
        return 0; /* not needed after all */
    if (count < 12) {
        dprintf(2, "sandbox-exec: a request has STDOUT STDERR NOFILE FSIZE AS NPROC UID GID NETNS MNTNS -- BWRAP\n");
        return 125;
    }
    int null = open("/dev/null", O_RDONLY);
    int out = open(fields[0], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int err = open(fields[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (null < 0 || out < 0 || err < 0 || dup2(null, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
        return fail("cannot open", fields[0]);
    close(null);
    return launch(count - 2, fields + 2, 1);
}

/* Prints "ready", then waits until stdin closes. */
static int hold(void) {
    if (write(1, "ready\n", 6) != 6)
        return fail("write", "stdout");
    char buffer[64];
    for (;;) {
        ssize_t got = read(0, buffer, sizeof buffer);
        if (got == 0 || (got < 0 && errno != EINTR))
            return 0;
    }
}

static int hold_mntns(int count, char **mountpoints) {
    if (unshare(CLONE_NEWNS) != 0)
        return fail("unshare", "CLONE_NEWNS");
    /* Mounts made here stay here; what the host mounts where it shares reaches here. */
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0)
        return fail("cannot make a slave of", "/");
    for (int i = 0; i < count; i++) {
        /* Again while it works: more than one mount may be stacked at one mountpoint. */
        int detached = 0;
        while (umount2(mountpoints[i], MNT_DETACH | UMOUNT_NOFOLLOW) == 0)
            detached++;
        if (!detached && errno != EINVAL && errno != ENOENT)
            return fail("cannot detach", mountpoints[i]);
    }
    return hold();
}

static int hold_netns(void) {
    if (unshare(CLONE_NEWNET) != 0)
        return fail("unshare", "CLONE_NEWNET");
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail("socket", "AF_INET");
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strcpy(request.ifr_name, "lo");
    request.ifr_flags = IFF_UP | IFF_RUNNING;
    if (ioctl(fd, SIOCSIFFLAGS, &request) != 0)
        return fail("cannot bring up", "lo");
    close(fd);
    return hold();
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--netns") == 0)
        return hold_netns();
    if (argc >= 2 && strcmp(argv[1], "--mntns") == 0)
        return hold_mntns(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "--standby") == 0)
        return standby(argc - 2, argv + 2);
    return launch(argc - 1, argv + 1, 0);
}
