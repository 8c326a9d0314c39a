"""Machine CPU per sandboxed launch, kernel work in kernel threads included.

    sudo .venv/bin/python bench/sandbox_cpu.py [--runs 200] [--rounds 3] [--only NAME,...]

What an action's sandbox costs the machine is not all in the action's processes: a network
namespace, for one, is torn down by a kernel worker after its last process is gone. So each
variant runs N times one after another and the machine's busy time (/proc/stat: user, nice,
system, irq, softirq; not idle, iowait or steal) is read before and after, with a 1 s settle
for deferred kernel work. What other user processes on the machine spent meanwhile (those alive
at both ends, not this one's children) is subtracted; kernel threads are not, as part of theirs
is ours. Other processes that start and end within a round are not seen: a busy machine makes
some rounds high, hence the minimum beside the median. The variants run interleaved, round
after round; in ms of CPU per run.

The `chain` variants run `true` through workers.sandbox.run as a worker does (its own Python
included: the standby sandbox-exec, the cgroups, the exec directory), once with the worker's
lent network namespaces and once with a namespace of bwrap's per action. Run as root, as a
production worker; nothing else heavy on the machine while it runs.
"""

import argparse
import ctypes
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Lazy RCU (CONFIG_RCU_LAZY) may defer the frees of a torn-down namespace by up to 10 s.
SETTLE_SECONDS = 1.0
PR_SET_CHILD_SUBREAPER = 36


def busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return user + nice + system + irq + softirq


def _processes() -> Iterator[tuple[int, list[str], bool]]:
    """(pid, the fields of /proc/PID/stat after the command name, whether it is a kernel thread)
    of every process alive now."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(entry)
        yield pid, fields, bool(int(fields[6]) & 0x00200000) or int(fields[1]) == 2 or pid == 2  # PF_KTHREAD


def user_process_ticks() -> dict[tuple[int, str], int]:
    """(pid, start time) -> CPU ticks of every user process but this one and its children
    (kernel threads left out). Their own ticks only: those of the children they reaped may
    have been spent before."""
    me = os.getpid()
    return {
        (pid, fields[19]): int(fields[11]) + int(fields[12])
        for pid, fields, kernel in _processes()
        if not kernel and pid != me and int(fields[1]) != me
    }


def adopt_orphans() -> None:
    """Make this process the reaper of its orphaned descendants: bwrap exits as soon as the
    command has (its init, pid 1 of the sandbox, writes the exit status to an eventfd), before
    that init is reaped, so the init, the shim and the command would go to the host's init, and
    their CPU time with them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans() -> None:
    """Reap the orphans adopted meanwhile (every child this bench started itself and waits for
    has been waited for by then; the standby and namespace holders kept ahead are alive)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def own_seconds() -> float:
    """CPU time of this process and of every descendant it has reaped (orphans adopted, see
    adopt_orphans): what no other process on the machine adds to."""
    reap_orphans()
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def kernel_thread_ticks() -> int:
    """CPU ticks of every kernel thread (kworkers, ksoftirqd, RCU): some of it is ours, some
    the other work's."""
    return sum(int(fields[11]) + int(fields[12]) for _pid, fields, kernel in _processes() if kernel)


@dataclass
class Sample:
    """ms per call: the machine's busy time less other processes'; this process and its
    children by rusage; kernel threads'."""

    machine: float
    own: float
    kernel_threads: float


def measure(runs: int, once: Callable[[], None], settle: float = SETTLE_SECONDS) -> Sample:
    """ms of CPU per call of `once`, three ways (see Sample)."""
    others, before = user_process_ticks(), busy_ticks()
    own, kthreads = own_seconds(), kernel_thread_ticks()
    for _ in range(runs):
        once()
    time.sleep(settle)
    after, others_after = busy_ticks(), user_process_ticks()
    own, kthreads = own_seconds() - own, kernel_thread_ticks() - kthreads
    foreign = sum(others_after[key] - ticks for key, ticks in others.items() if key in others_after)
    tick = os.sysconf("SC_CLK_TCK")
    return Sample(
        (after - before - foreign) * 1000 / tick / runs, own * 1000 / runs, kthreads * 1000 / tick / runs
    )


def command(argv: list[str]) -> Callable[[], None]:
    def once() -> None:
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, env={})

    return once


def chain(exec_dir: Path, lend: bool) -> Callable[[], None]:
    from workers import sandbox
    from workers.pools import Limits

    box = sandbox.current(exec_dir)
    limits = Limits(memory=1 << 30, pids=256, nofile=1024, file_size=1 << 30, output=1 << 30)

    def once() -> None:
        lends = sandbox.Sandbox.lends_netns
        if not lend:  # a namespace of bwrap's per action, as a worker that is not root
            sandbox.Sandbox.lends_netns = property(lambda self: False)  # type: ignore[method-assign, assignment]
        try:
            base = Path(tempfile.mkdtemp(dir=exec_dir))
            sandbox.prepare_base(base)
            sandbox.make_dir(box, base / "root")
            outcome, _ = sandbox.run(
                box, "bench", limits, False, base, ".", ["true"], {}, 60, threading.Event()
            )
            assert outcome.exit_code == 0, (base / "stderr").read_text()
            sandbox._rmtree(base)
        finally:
            sandbox.Sandbox.lends_netns = lends  # type: ignore[method-assign]

    return once


def standby(exec_dir: Path) -> Callable[[], None]:
    """A standby sandbox-exec in the worker's cgroups, ended unused: the chain's cgroup cost."""
    from workers import sandbox
    from workers.pools import Limits

    box = sandbox.current(exec_dir)
    limits = Limits(memory=1 << 30, pids=256, nofile=1024, file_size=1 << 30, output=1 << 30)

    def once() -> None:
        waiting = sandbox._standbys._start(box, limits)
        waiting.hand_over([])
        waiting.proc.wait()
        sandbox._standbys.give_back(waiting.group)

    return once


def bwrap_as_actions(exec_dir: Path, shim: bool) -> Callable[[], None]:
    """bwrap with an action's options in the host's network namespace, `true` with or without
    the sh shim: the mounts' cost."""
    from workers import sandbox
    from workers.pools import Limits

    box = sandbox.current(exec_dir)
    limits = Limits(memory=1 << 30, pids=256, nofile=1024, file_size=1 << 30, output=1 << 30)
    root = exec_dir / "bwrap-root"
    root.mkdir(exist_ok=True)
    opts = sandbox.bwrap_options(limits, True, root, ".", {"PATH": "/usr/bin:/bin"})
    tail = [sandbox.SH, "-c", 'exec "$@"', "sh", "/bin/true"] if shim else ["/bin/true"]
    return command([box.bwrap, *opts, "--", *tail])


def launch(exec_dir: Path, mounts: bool) -> Callable[[], None]:
    """sandbox-exec then bwrap with an action's options, the shim and `true`, in the host's
    network namespace and as root (no uid given), from the worker's mount namespace for
    launches (workers/mntns.py) or from the host's: what that namespace saves."""
    from workers import sandbox
    from workers.pools import Limits

    box = sandbox.current(exec_dir)
    limits = Limits(memory=1 << 30, pids=256, nofile=1024, file_size=1 << 30, output=1 << 30)
    root = exec_dir / "bwrap-root"
    root.mkdir(exist_ok=True)
    holder = sandbox._mounts.take(box.starter, lambda: sandbox._kept(box, root)) if mounts else None
    first = sandbox._first_step(
        box, limits, with_group=True, netns_path="-", mntns_path=holder.path if holder else "-"
    )
    opts = sandbox.bwrap_options(limits, True, root, ".", {"PATH": "/usr/bin:/bin"})
    return command([*first, box.bwrap, *opts, "--", sandbox.SH, "-c", 'exec "$@"', "sh", "/bin/true"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated variant names")
    parser.add_argument("--settle", type=float, default=SETTLE_SECONDS, help="seconds after a round's runs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the worker's sandbox (cgroups, lent namespaces) is root's")

    adopt_orphans()
    workdir = Path(tempfile.mkdtemp(prefix="reapi-sandbox-cpu-"))
    try:
        bench(args, workdir)
    finally:
        if "workers.sandbox" in sys.modules:  # its standbys and lent namespaces end first
            sys.modules["workers.sandbox"].release_standbys()
        shutil.rmtree(workdir, ignore_errors=True)


def bench(args: argparse.Namespace, workdir: Path) -> None:
    workdir.chmod(0o711)
    os.environ.update({"DATA_DIR": str(workdir), "DJANGO_SETTINGS_MODULE": "portal.settings"})
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    exec_dir = workdir / "exec"
    makers: dict[str, Callable[[], Callable[[], None]]] = {
        "true": lambda: command(["/bin/true"]),
        "bwrap": lambda: command(["bwrap", "--ro-bind", "/", "/", "true"]),
        "bwrap --unshare-all": lambda: command(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"]),
        "bwrap --unshare-all --share-net": lambda: command(
            ["bwrap", "--unshare-all", "--share-net", "--ro-bind", "/", "/", "true"]
        ),
        "chain-lent": lambda: chain(exec_dir, lend=True),
        "chain-own": lambda: chain(exec_dir, lend=False),
        "standby": lambda: standby(exec_dir),
        "bwrap-as-actions": lambda: bwrap_as_actions(exec_dir, shim=False),
        "bwrap-as-actions+sh": lambda: bwrap_as_actions(exec_dir, shim=True),
        "launch": lambda: launch(exec_dir, mounts=False),
        "launch-mntns": lambda: launch(exec_dir, mounts=True),
    }
    names = args.only.split(",") if args.only else list(makers)
    unknown = [name for name in names if name not in makers]
    if unknown:
        sys.exit(f"no variant {', '.join(unknown)}; there are: {', '.join(makers)}")
    variants = {name: makers[name]() for name in names}
    for once in variants.values():
        once()  # warm: page cache, the sandbox's probe
    results: dict[str, list[Sample]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, once in variants.items():
            results[name].append(measure(args.runs, once, args.settle))
    print(f"CPU per run, ms ({args.rounds} rounds of {args.runs}): min, median (all rounds)")
    for title, field in (
        ("the machine's, less other processes alive throughout", "machine"),
        ("this process and its children (rusage): steady under other work", "own"),
        ("kernel threads (partly the other work's)", "kernel_threads"),
    ):
        print(f"{title}:")
        for name, samples in results.items():
            values = [getattr(sample, field) for sample in samples]
            rounds = " ".join(f"{v:.2f}" for v in values)
            print(f"  {name:34} {min(values):6.2f} {statistics.median(values):6.2f}   ({rounds})")


if __name__ == "__main__":
    main()
