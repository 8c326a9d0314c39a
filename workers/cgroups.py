"""A control group per sandboxed action: its memory and process limits, and how it ended.

A cgroup limits the action as a whole (every process it starts), where an rlimit would limit
each process alone. Both layouts Linux offers are handled: cgroup v1, one hierarchy per
controller (`/sys/fs/cgroup/memory`, `/sys/fs/cgroup/pids`), and the unified cgroup v2
hierarchy with both controllers enabled. Where neither can be written (a worker that is not
root, or a container without them), `Controllers.find()` returns None and the sandbox falls
back to rlimits, which it says on the Workers page.

A worker process keeps its groups and lends each to one action at a time (`Pool`), rather than
making and removing one per action; see `Pool` for why that is as safe as a new group.
"""

import contextlib
import errno
import itertools
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "reapi-sandbox"


@dataclass(frozen=True)
class Controllers:
    """Where this host's memory and pids controllers are, and in which layout."""

    memory: Path  # the parent group for actions under the memory controller
    pids: Path
    v2: bool

    @staticmethod
    def find(root: Path = CGROUP_ROOT) -> "Controllers | None":
        """The controllers a worker can make groups under, or None."""
        v1_memory, v1_pids = root / "memory", root / "pids"
        if (v1_memory / "cgroup.procs").exists() and (v1_pids / "cgroup.procs").exists():
            found = Controllers(v1_memory / PARENT, v1_pids / PARENT, v2=False)
        elif {"memory", "pids"} <= set(_read(root / "cgroup.controllers").split()):
            found = Controllers(root / PARENT, root / PARENT, v2=True)
        else:
            return None
        try:
            found._make_parents(root)
        except OSError as exc:
            log.info("cgroups not usable here (%s); the sandbox limits by rlimits", exc.strerror)
            return None
        limit = "memory.max" if found.v2 else "memory.limit_in_bytes"
        if not (found.memory / limit).exists() or not (found.pids / "pids.max").exists():
            return None
        return found

    def _make_parents(self, root: Path) -> None:
        for parent in {self.memory, self.pids}:
            parent.mkdir(exist_ok=True)
        if self.v2:
            # v2 hands a controller to children only when the parent enables it for them.
            for group in (root, self.memory):
                with open(group / "cgroup.subtree_control", "w") as f:
                    f.write("+memory +pids")

    def group(self, name: str) -> "ActionGroup":
        paths = [self.memory / name] if self.v2 else [self.memory / name, self.pids / name]
        return ActionGroup(paths, self.v2)


class ActionGroup:
    """One action's group (one directory in v2, one per controller in v1), lent to one action
    at a time by a Pool."""

    def __init__(self, paths: list[Path], v2: bool) -> None:
        self.paths = paths
        self.v2 = v2
        self._memory: int | None = None  # the memory limit written last; None: a new group's
        # The cumulative counters as they stood when the group was lent: what the kernel counts
        # in memory.oom_control / memory.events (oom_kill) and pids.events (max) cannot be
        # reset, so an action's events are those above these.
        self._oom_kills = 0
        self._pids_refusals = 0

    @property
    def name(self) -> str:
        return self.paths[0].name

    @property
    def memory_dir(self) -> Path:
        return self.paths[0]

    @property
    def pids_dir(self) -> Path:
        return self.paths[-1]

    def create(self, memory_bytes: int, max_pids: int) -> None:
        for path in self.paths:
            path.mkdir()
        self.lend(memory_bytes, max_pids)

    def lend(self, memory_bytes: int, max_pids: int) -> None:
        """Set the next action's limits and take the counters' baseline; the group is empty.
        Raises OSError where the kernel refuses the limit (v1: EBUSY when what is still
        charged, a previous action's page cache, cannot be reclaimed below it)."""
        if self.v2:
            _write(self.memory_dir / "memory.max", memory_bytes)
            # No swap: an action over its memory is killed, not slowed to a crawl.
            with contextlib.suppress(FileNotFoundError):
                _write(self.memory_dir / "memory.swap.max", 0)
        else:
            # v1 refuses a memory limit above the memory+swap one (EINVAL): the one that keeps
            # memory <= memory+swap at each step goes first. memsw is absent without swap
            # accounting.
            limit, memsw = (
                self.memory_dir / "memory.limit_in_bytes",
                self.memory_dir / "memory.memsw.limit_in_bytes",
            )
            raising = self._memory is not None and memory_bytes > self._memory
            for path in (memsw, limit) if raising else (limit, memsw):
                if path is limit:
                    _write(path, memory_bytes)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        _write(path, memory_bytes)
        self._memory = memory_bytes
        _write(self.pids_dir / "pids.max", max_pids)
        self._oom_kills = self._oom_kill_count()
        self._pids_refusals = self._pids_refusal_count()

    def procs_files(self) -> list[str]:
        """The files a process writes its pid to, to join every controller of this group."""
        return [str(p / "cgroup.procs") for p in self.paths]

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the group for memory since it was lent."""
        return self._oom_kill_count() > self._oom_kills

    def pids_refused(self) -> bool:
        """Whether a fork or clone was refused because the group was at its process limit,
        since it was lent."""
        return self._pids_refusal_count() > self._pids_refusals

    def _oom_kill_count(self) -> int:
        events = _read(self.memory_dir / ("memory.events" if self.v2 else "memory.oom_control"))
        return _counter(events, "oom_kill")

    def _pids_refusal_count(self) -> int:
        return _counter(_read(self.pids_dir / "pids.events"), "max")

    def pids_charged(self) -> int:
        """Tasks the pids controller still counts: an exited process is counted until it is
        reaped (a zombie), though it is no longer in cgroup.procs."""
        text = _read(self.pids_dir / "pids.current").strip()
        return int(text) if text.isdigit() else -1

    def kill_all(self) -> bool:
        """SIGKILL whatever is left in the group, until it is empty (a fork bomb refills); True
        once it is. Empty: no process in cgroup.procs, so every process of the group has gone
        through the kernel's cgroup_exit(), which comes after it closed its files and
        released its memory (kernel/exit.c, do_exit)."""
        if self.v2:
            with contextlib.suppress(OSError):
                _write(self.pids_dir / "cgroup.kill", 1)
        pause = 0.0002
        for _ in range(500):
            # v1: both controllers' groups, in case a process joined one and not the other.
            try:
                pids = {pid for path in self.paths for pid in _procs(path)}
            except OSError:
                return False  # not known to be empty
            if not pids:
                return True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # Most often the last process is about gone (exiting, not yet out of the group): look
            # again soon, then less often.
            time.sleep(pause)
            pause = min(pause * 2, 0.002)
        return False

    def remove(self) -> bool:
        """Kill what is left and remove the group; True once it is gone, so every process that
        was in it has exited (closed its files) too."""
        self.kill_all()
        removed = True
        for path in self.paths:
            # A group whose last process is still being reaped is busy for a moment.
            for _ in range(1000):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    time.sleep(0.002)
            else:
                log.warning("cgroup %s still busy; left for the next start to remove", path)
                removed = False
        return removed


class Pool:
    """The action groups of one worker process, free ones kept for the next actions.

    Making a group and removing it per action cost ~0.3-0.4 ms of CPU in v1 on the host
    measured (two mkdir and two rmdir, and the kernel freeing the memory cgroup in its workers
    afterwards), lending one about half that (bench/README.md); and a removed memory cgroup that
    still has page cache charged to it lingers in the kernel until those pages are reclaimed. So
    a group is reused, as workers/netns.py reuses network namespaces.
    Sequential reuse is safe: a group goes back only empty (kill_all: every process of the
    action dead), and is lent again with the next action's limits written anew and a
    baseline of the kernel's cumulative counters, so oom_killed() and pids_refused() tell only
    that action's events. What a previous action leaves charged to the memory group is page
    cache (of files it read; its own directory and /tmp are gone with it), which the kernel
    reclaims when the next action needs the room. An exited process not yet reaped still
    counts in pids.current: a group with one is not lent (it would shorten the action's
    process limit) but removed. A group that does not empty, or whose limits the kernel
    refuses, is removed, and a new one made."""

    KEEP = 16  # free groups at most; more come back only with more actions at once

    def __init__(self, controllers: Controllers, prefix: str) -> None:
        self.controllers = controllers
        self.prefix = prefix
        self._free: list[ActionGroup] = []
        self._lock = threading.Lock()
        self._serial = itertools.count()
        self._closed = False

    def take(self, memory_bytes: int, max_pids: int) -> ActionGroup:
        """An empty group with these limits, lent to one action until given back."""
        while True:
            with self._lock:
                group = self._free.pop() if self._free else None
            if group is None:
                break
            if group.pids_charged() == 0:
                try:
                    group.lend(memory_bytes, max_pids)
                    return group
                except OSError as exc:
                    log.info("cgroup %s not reused (%s); making another", group.name, exc.strerror)
            group.remove()
        group = self.controllers.group(f"{self.prefix}{next(self._serial)}")
        try:
            group.create(memory_bytes, max_pids)
        except BaseException:
            group.remove()
            raise
        return group

    def give_back(self, group: ActionGroup) -> bool:
        """After an action: kill what it left; keep the group once it is empty, else remove it.
        True once every process that was in it is gone."""
        if group.kill_all():
            with self._lock:
                if not self._closed and len(self._free) < self.KEEP:
                    self._free.append(group)
                    return True
        return group.remove()

    def release(self) -> None:
        """At a worker's end: the free groups are removed now, those lent when given back."""
        with self._lock:
            free, self._free = self._free, []
            self._closed = True
        for group in free:
            group.remove()


def remove_stale(controllers: Controllers, prefix: str) -> None:
    """Remove the groups a dead worker of this host left (their names start with `prefix`)."""
    for parent in {controllers.memory, controllers.pids}:
        with contextlib.suppress(FileNotFoundError):
            for entry in parent.iterdir():
                if entry.is_dir() and entry.name.startswith(prefix):
                    ActionGroup([entry], controllers.v2).remove()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _procs(group: Path) -> list[int]:
    """The processes in a group; none in one that is gone (a group with a process in it cannot
    be removed)."""
    try:
        return [int(pid) for pid in (group / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _write(path: Path, value: int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _counter(text: str, name: str) -> int:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return 0
