"""Actions run in a bubblewrap sandbox: nothing of the worker, the server or another tenant in reach.

Commands arrive from workstations over the internet, so each runs with:
- new user, mount, PID, IPC, UTS and cgroup namespaces, and a network namespace with only
  loopback in it, which no other action is in at the same time, unless its pool allows the
  network and it asks for it (`network=on`). A root worker with cgroups lends it one of the
  namespaces it keeps (workers/netns.py; making and tearing down one per action costs the
  machine 1-4 ms of CPU); the action's user namespace does not own that one, so it has no
  capability over it (no sysctls, interfaces, routes or raw sockets). Sequential reuse is safe
  because a namespace goes back to the worker only once every process of the action is dead
  (its cgroup is empty, so each socket it had is closed) and it is as new (no socket, no
  TIME_WAIT connection, no packet ever on `lo`); otherwise it is dropped. Elsewhere (a worker
  that is not root cannot join a namespace, and without a cgroup it cannot know the action's
  last process is gone) bwrap makes one per action;
- an unprivileged uid/gid: REAPI_SANDBOX_UID/GID when the worker is root, else the worker's
  own; never 0, so a file it leaves on the host side is owned by that uid;
- the host's system directories read-only (/usr, /bin, /lib*, /sbin, /etc less its secrets),
  a fresh /tmp, /dev and /proc, and its input root, mounted at SANDBOX_ROOT, as the only host
  directory it can write. DATA_DIR, the database, the storage and other actions' directories
  are not mounted at all;
- exactly the Command's environment variables;
- limits: memory and processes for the whole action (a cgroup where the worker can make one,
  else RLIMIT_AS and RLIMIT_NPROC), open files and file size per process (rlimits), and the
  bytes it writes under its directory (watched while it runs).

The launch chain, each step exec'ing the next so that one process is left to wait for:
`sandbox-exec` (workers/sandbox_exec.c, a small static program: joins the lent network
namespace and, on a root worker, the mount namespace the worker keeps for launches (the host's
less the mounts no action needs, so that bwrap's many re-reads of the mount table cost less:
workers/mntns.py), sets the action's rlimits and drops to the sandbox's uid with no
supplementary groups and no capabilities) -> `bwrap` ->
`sh -c 'exec "$@"'` (so a missing program is exit 127 and one that cannot run 126, as in a
shell) -> the command. One static program rather than a shell and setpriv saves an exec and
~1.5 ms of CPU per action; dropping the uid in the chain rather than in the worker lets Python
start it with vfork. Where there are cgroups, an action's sandbox-exec is started ahead, while
the action before it runs: it joins the action's cgroups (a move into a cgroup waits for an RCU
grace period, ~10 ms here) and waits on stdin for its stdout, stderr and the rest of its
arguments (`--standby`), so the action does not wait for the move. Then it runs bwrap as its
child and stays, as child subreaper, until every process of the action is reaped (bwrap's init
outlives bwrap). The cgroups are the worker's, lent to one action at a time and taken back
only once empty (workers/cgroups.py, `Pool`).
The chain gets no environment: nothing of the action's (LD_PRELOAD…) reaches a process
outside the sandbox.
"""

import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from django.conf import settings

from reapi.errors import InvalidArgument
from workers import cgroups, mntns, netns, process, sandbox_exec
from workers.pools import Limits

log = logging.getLogger(__name__)

BWRAP = "bwrap"
SH = "/bin/sh"
SANDBOX_ROOT = "/exec/root"  # the same for every action: outputs that embed it stay reproducible
SYSTEM_DIRS = ("/usr", "/etc")
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Under the read-only /etc, what an action must not read even where its mode would let it.
SECRETS = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/ssl/private",
    "/etc/ssh",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/reapi",
)
# How often the bytes an action wrote are measured, at least (a large tree is measured less often).
WATCH_SECONDS = 0.5


def group_prefix(pid: int) -> str:
    """Names of the cgroups of a worker process start with this, so the next worker on the host
    can remove what a killed one left."""
    return f"{socket.gethostname()}-{pid}-"


class SandboxUnavailable(RuntimeError):
    """This worker cannot make the sandbox; the message says why and what to do."""


@dataclass(frozen=True)
class Sandbox:
    """How this worker runs actions, found once at start."""

    enabled: bool
    bwrap: str = ""
    uid: int | None = None  # None: the worker's own (a worker that is not root)
    gid: int | None = None
    controllers: cgroups.Controllers | None = None
    starter: str = ""  # sandbox-exec, the chain's first program

    @property
    def lends_netns(self) -> bool:
        """Whether actions without the network get one of the worker's namespaces (see the top):
        joining one takes root, and giving it back safely a cgroup to see every process gone."""
        return self.enabled and self.uid is not None and self.controllers is not None

    @property
    def owner(self) -> tuple[int, int] | None:
        """Who must own the directories an action writes into."""
        return (self.uid, self.gid) if self.uid is not None and self.gid is not None else None

    def describe(self) -> str:
        if not self.enabled:
            return "UNSANDBOXED (REAPI_SANDBOX=off)"
        uid = self.uid if self.uid is not None else os.geteuid()
        limits = "cgroup memory and process limits" if self.controllers else "rlimits only (no cgroups)"
        return f"sandboxed by bubblewrap as uid {uid}, {limits}"


def setup(exec_dir: Path) -> Sandbox:
    """The sandbox this worker will use, proven by running a probe action in it; raises
    SandboxUnavailable saying why, unless REAPI_SANDBOX=off."""
    if not settings.REAPI_SANDBOX:
        log.warning("REAPI_SANDBOX=off: actions run unsandboxed, with this worker's rights")
        return Sandbox(enabled=False)
    bwrap = shutil.which(BWRAP)
    if bwrap is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap`, "
            "or set REAPI_SANDBOX=off to run actions unsandboxed on purpose"
        )
    try:
        starter = sandbox_exec.program()
    except sandbox_exec.BuildFailed as exc:
        raise SandboxUnavailable(
            f"{exc}, or set REAPI_SANDBOX=off to run actions unsandboxed on purpose"
        ) from None
    if os.geteuid() == 0:
        uid, gid = settings.REAPI_SANDBOX_UID, settings.REAPI_SANDBOX_GID
        if uid == 0 or gid == 0:
            raise SandboxUnavailable("REAPI_SANDBOX_UID and REAPI_SANDBOX_GID must not be 0")
        sandbox = Sandbox(True, bwrap, uid, gid, cgroups.Controllers.find(), starter)
    else:
        sandbox = Sandbox(True, bwrap, None, None, cgroups.Controllers.find(), starter)
    try:
        _probe(sandbox, exec_dir)
    except BaseException:
        # A worker that cannot sandbox exits: nothing of the probe's (its cgroups, kept for the
        # next action, and namespace holders) may outlive it.
        release_standbys()
        raise
    log.info("actions run %s", sandbox.describe())
    return sandbox


def _probe(sandbox: Sandbox, exec_dir: Path) -> None:
    """Run `true` in a sandbox as an action would be: user namespaces, mounts and the path to
    the exec directory all have to work, or the worker must not start."""
    exec_dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="probe-", dir=exec_dir))
    try:
        root = base / "root"
        prepare_base(base)
        make_dir(sandbox, root)
        limits = Limits(memory=256 << 20, pids=64, nofile=256, file_size=1 << 20, output=1 << 20)
        try:
            outcome, _message = run(
                sandbox,
                f"{group_prefix(os.getpid())}probe",
                limits,
                False,
                base,
                ".",
                ["true"],
                {},
                60,
                threading.Event(),
                keep_ready=False,
            )
        except netns.NamespaceUnavailable as exc:
            raise SandboxUnavailable(
                f"{exc}; or set REAPI_SANDBOX=off to run actions unsandboxed on purpose"
            ) from None
        if outcome.exit_code != 0:
            stderr = (base / "stderr").read_text(errors="replace").strip()
            raise SandboxUnavailable(
                f"a probe action failed in the sandbox (exit {outcome.exit_code}): {stderr[-500:]}. "
                f"User namespaces must be allowed (sysctl kernel.unprivileged_userns_clone=1, "
                f"user.max_user_namespaces > 0) and every directory above {exec_dir} searchable by "
                f"uid {sandbox.uid if sandbox.uid is not None else os.geteuid()} (mode o+x); "
                f"or set REAPI_SANDBOX=off to run actions unsandboxed on purpose"
            )
    finally:
        _rmtree(base)


def prepare_base(base: Path) -> None:
    """The action's private directory: the sandbox uid may pass through it, not list it."""
    base.chmod(0o711)
    base.parent.chmod(0o711)


def make_dir(sandbox: Sandbox, path: Path) -> None:
    """A directory of the input root, writable by the action."""
    path.mkdir()
    if sandbox.enabled and sandbox.owner:
        os.chown(path, *sandbox.owner)


def check_command(argv: list[str], env: dict[str, str]) -> None:
    """What the kernel cannot take as arguments or environment is the client's error."""
    for arg in argv:
        if "\0" in arg:
            raise InvalidArgument("a command argument contains a NUL byte")
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise InvalidArgument(f"environment variable name {name[:100]!r} is not valid")
        if "\0" in value:
            raise InvalidArgument(f"environment variable {name[:100]} contains a NUL byte")


def run(
    sandbox: Sandbox,
    name: str,
    limits: Limits,
    network: bool,
    base: Path,
    workdir: str,
    argv: list[str],
    env: dict[str, str],
    timeout: float,
    cancelled: threading.Event,
    input_bytes: int = 0,
    keep_ready: bool = True,
) -> tuple[process.Outcome, str]:
    """Run the command with `base/root` as its input root and `workdir` (relative to it) as its
    working directory; stdout and stderr go to `base/stdout` and `base/stderr`. Returns the
    outcome and, when a limit ended it, a sentence saying which (also appended to stderr).
    `keep_ready`: start the next action's sandbox-exec with these limits meanwhile."""
    check_command(argv, env)
    root, stdout, stderr = base / "root", base / "stdout", base / "stderr"
    if not sandbox.enabled:
        log.warning("action %s runs UNSANDBOXED (REAPI_SANDBOX=off)", name)
        outcome = process.run(argv, root / workdir, env, stdout, stderr, timeout, cancelled, base / "pgid")
        return outcome, ""
    watch = _OutputWatch(base, limits.output, input_bytes)
    if sandbox.controllers is None:
        chain = [
            *_first_step(sandbox, limits, with_group=False, netns_path="-", mntns_path="-"),
            *_sandbox(sandbox, limits, network, root, workdir, argv, env),
        ]
        outcome = process.run(
            chain, None, {}, stdout, stderr, timeout, cancelled, base / "pgid", watch=watch.check
        )
        message = _explain(outcome, limits, None, watch)
    else:
        # sandbox-exec opens them itself; they exist whatever becomes of it.
        stdout.write_bytes(b"")
        stderr.write_bytes(b"")
        standby = _standbys.take(sandbox, limits)
        lent = mounts = None
        try:
            if sandbox.lends_netns and not network:
                lent = _namespaces.take(sandbox.starter)
            if sandbox.lends_netns:
                mounts = _mounts.take(sandbox.starter, functools.partial(_kept, sandbox, base))
            first = _first_step(
                sandbox,
                limits,
                with_group=True,
                netns_path=lent.path if lent else "-",
                mntns_path=mounts.path if mounts else "-",
            )
            request = [str(stdout), str(stderr), *first[1:]]
            request += _sandbox(sandbox, limits, network or lent is not None, root, workdir, argv, env)
            standby.hand_over(request)
            if keep_ready:
                # The next action's, in its cgroups while this one runs (see sandbox_exec.c).
                _standbys.prepare(sandbox, limits)
            if lent is not None:
                _namespaces.prepare(sandbox.starter)
            outcome = process.supervise(standby.proc, timeout, cancelled, base / "pgid", watch=watch.check)
            message = _explain(outcome, limits, standby.group, watch)
        finally:
            emptied = _standbys.give_back(standby.group)
            _mounts.give_back(mounts)  # its sandbox-exec joined it long ago
            if lent is not None:
                # Only once every process of the action is gone (see workers/netns.py).
                _namespaces.give_back(lent, emptied)
    if message:
        with open(stderr, "ab") as f:
            f.write(f"\n[remote sandbox] {message}\n".encode())
    return outcome, message


@dataclass
class _Standby:
    """sandbox-exec --standby in an action's cgroups, waiting for the rest of its launch."""

    group: cgroups.ActionGroup
    proc: subprocess.Popen[bytes]

    def hand_over(self, request: list[str]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("".join(f"{field}\0" for field in request).encode())
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it failed to join its cgroups (its message is in the worker's log): exit 125


class _Standbys:
    """sandbox-exec processes started ahead of the actions that will use them, each in a group
    of the worker's pool (workers/cgroups.py)."""

    def __init__(self) -> None:
        self._ready: dict[Limits, list[_Standby]] = {}
        self._lock = threading.Lock()
        self._groups: cgroups.Pool | None = None

    def take(self, sandbox: Sandbox, limits: Limits) -> _Standby:
        with self._lock:
            ready = self._ready.get(limits)
            if ready:
                return ready.pop()
        return self._start(sandbox, limits)

    def prepare(self, sandbox: Sandbox, limits: Limits) -> None:
        standby = self._start(sandbox, limits)
        with self._lock:
            self._ready.setdefault(limits, []).append(standby)

    def give_back(self, group: cgroups.ActionGroup) -> bool:
        """An action's group after its run (see cgroups.Pool.give_back)."""
        assert self._groups is not None
        return self._groups.give_back(group)

    def release(self) -> None:
        """End the ones waiting (a closed stdin ends them) and remove every group of the pool."""
        with self._lock:
            waiting = [standby for ready in self._ready.values() for standby in ready]
            self._ready.clear()
            groups = self._groups
        for standby in waiting:
            standby.hand_over([])
            standby.proc.wait()
            standby.group.remove()
        if groups is not None:
            groups.release()

    def _pool(self, controllers: cgroups.Controllers) -> cgroups.Pool:
        with self._lock:
            if self._groups is None:
                self._groups = cgroups.Pool(controllers, group_prefix(os.getpid()))
            return self._groups

    def _start(self, sandbox: Sandbox, limits: Limits) -> _Standby:
        assert sandbox.controllers is not None
        groups = self._pool(sandbox.controllers)
        group = groups.take(limits.memory, limits.pids)
        try:
            proc = subprocess.Popen(
                [sandbox.starter, "--standby", *group.procs_files()],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                env={},
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            groups.give_back(group)
            raise
        return _Standby(group, proc)


_standbys = _Standbys()
_namespaces = netns.Pool()
_mounts = mntns.Keeper()


def release_standbys() -> None:
    """At a worker's end: no sandbox-exec, cgroup, network or mount namespace of its own is left
    behind."""
    _standbys.release()
    _namespaces.release()
    _mounts.release()


def _kept(sandbox: Sandbox, base: Path) -> tuple[list[str], list[str]]:
    """What the mount namespace actions start from must keep mounted (workers/mntns.py): the
    trees of what bwrap binds, the exec directory, /proc and bwrap's own directory; /dev and
    /tmp themselves."""
    dirs = [*SYSTEM_DIRS, *settings.REAPI_SANDBOX_READ_ONLY, *SYSTEM_LINKS]
    dirs += [str(base.parent), "/proc", os.path.dirname(sandbox.bwrap)]
    return sorted({path for d in dirs for path in (d, os.path.realpath(d))}), ["/dev", "/tmp"]


def _first_step(
    sandbox: Sandbox, limits: Limits, with_group: bool, netns_path: str, mntns_path: str
) -> list[str]:
    """sandbox-exec and its arguments up to `--`. Open files and file size are per process, core
    files off; without a cgroup, per-process limits on memory and processes are the best there
    is. `netns_path`, `mntns_path`: the network and mount namespaces it joins, "-" for none."""
    memory, pids = ("-", "-") if with_group else (str(limits.memory), str(limits.pids))
    uid, gid = (str(sandbox.owner[0]), str(sandbox.owner[1])) if sandbox.owner else ("-", "-")
    return [
        sandbox.starter,
        str(limits.nofile),
        str(limits.file_size),
        memory,
        pids,
        uid,
        gid,
        netns_path,
        mntns_path,
        "--",
    ]


def _sandbox(
    sandbox: Sandbox,
    limits: Limits,
    share_net: bool,
    root: Path,
    workdir: str,
    argv: list[str],
    env: dict[str, str],
) -> list[str]:
    """bwrap and what it runs: the shell shim, then the command. `share_net`: keep the network
    namespace sandbox-exec is in (the host's, or one lent by the worker)."""
    # The shell exports PWD of its own accord; the command gets exactly its environment.
    shim = 'exec "$@"' if "PWD" in env else 'unset PWD; exec "$@"'
    return [
        sandbox.bwrap,
        *bwrap_options(limits, share_net, root, workdir, env),
        "--",
        SH,
        "-c",
        shim,
        "sh",
        *argv,
    ]


def bwrap_options(
    limits: Limits, share_net: bool, root: Path, workdir: str, env: dict[str, str]
) -> list[str]:
    opts = ["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
    if share_net:
        opts.append("--share-net")
    opts += ["--hostname", "sandbox"]
    for path in SYSTEM_DIRS + tuple(settings.REAPI_SANDBOX_READ_ONLY):
        if os.path.isdir(path):
            opts += ["--ro-bind", path, path]
    for path in SYSTEM_LINKS:
        if os.path.islink(path):
            opts += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            opts += ["--ro-bind", path, path]
    for path in SECRETS + tuple(settings.REAPI_SANDBOX_HIDE):
        if os.path.isdir(path) and not os.path.islink(path):
            opts += ["--tmpfs", path]
        elif os.path.lexists(path):
            opts += ["--ro-bind", "/dev/null", path]
    opts += ["--proc", "/proc", "--dev", "/dev"]
    opts += ["--size", str(limits.output), "--tmpfs", "/tmp"]
    opts += ["--bind", str(root), SANDBOX_ROOT]
    # The sandbox's own root (a tmpfs holding the mount points) is read-only once they exist.
    opts += ["--remount-ro", "/"]
    opts += ["--chdir", str(PurePosixPath(SANDBOX_ROOT, workdir))]
    opts.append("--clearenv")
    for name, value in env.items():
        opts += ["--setenv", name, value]
    return opts


class _OutputWatch:
    """Measures what an action wrote under its directory (inputs, outputs, stdout and stderr)
    and ends it once that passes its output limit. A tree with many files is measured less
    often, so the watching stays a small share of the worker's time."""

    def __init__(self, base: Path, limit: int, input_bytes: int) -> None:
        self.base = base
        self.limit = limit
        self.input_bytes = input_bytes
        self.next_at = time.monotonic() + WATCH_SECONDS
        self.exceeded = False

    def check(self) -> str | None:
        now = time.monotonic()
        if now < self.next_at:
            return None
        written = bytes_under(self.base) - self.input_bytes
        took = time.monotonic() - now
        self.next_at = time.monotonic() + max(WATCH_SECONDS, took * 20)
        if written > self.limit:
            self.exceeded = True
            return "output limit"
        return None


def bytes_under(path: Path) -> int:
    """Apparent size of every file below `path`, not following symlinks."""
    total = 0
    pending = [str(path)]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    return total


def _explain(
    outcome: process.Outcome, limits: Limits, group: cgroups.ActionGroup | None, watch: _OutputWatch
) -> str:
    """Which limit ended the action, in words for the person whose build failed."""
    reasons = []
    if watch.exceeded:
        reasons.append(f"killed: output limit {human(limits.output)} (bytes written under its directory)")
    if group is not None and group.oom_killed():
        reasons.append(f"killed: memory limit {human(limits.memory)}")
    if outcome.exit_code == 128 + signal.SIGXFSZ:
        reasons.append(f"a process was stopped at the file size limit {human(limits.file_size)}")
    if group is not None and group.pids_refused():
        reasons.append(f"it reached its process limit ({limits.pids}): new processes were refused")
    return "; ".join(reasons)


def human(n: int) -> str:
    value, units = float(n), ["B", "KiB", "MiB", "GiB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    return f"{value:.4g} {units[0]}"


def _rmtree(path: Path) -> None:
    from workers.monitor import force_rmtree

    force_rmtree(str(path))


_current: Sandbox | None = None
_lock = threading.Lock()


def current(exec_dir: Path) -> Sandbox:
    """This process's sandbox, set up (and probed) on first use."""
    global _current
    with _lock:
        if _current is None:
            _current = setup(exec_dir)
        return _current
