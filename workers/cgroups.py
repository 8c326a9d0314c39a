"""A control group per sandboxed action: its memory and process limits, and how it ended.

A cgroup limits the action as a whole (every process it starts), where an rlimit would limit
each process alone. Both layouts Linux offers are handled: cgroup v1, one hierarchy per
controller (`/sys/fs/cgroup/memory`, `/sys/fs/cgroup/pids`), and the unified cgroup v2
hierarchy with both controllers enabled. Where neither can be written (a worker that is not
root, or a container without them), `Controllers.find()` returns None and the sandbox falls
back to rlimits, which it says on the Workers page.
"""

import contextlib
import errno
import logging
import os
import signal
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
    """One action's group (one directory in v2, one per controller in v1)."""

    def __init__(self, paths: list[Path], v2: bool) -> None:
        self.paths = paths
        self.v2 = v2

    @property
    def memory_dir(self) -> Path:
        return self.paths[0]

    @property
    def pids_dir(self) -> Path:
        return self.paths[-1]

    def create(self, memory_bytes: int, max_pids: int) -> None:
        for path in self.paths:
            path.mkdir()
        if self.v2:
            _write(self.memory_dir / "memory.max", memory_bytes)
            # No swap: an action over its memory is killed, not slowed to a crawl.
            with contextlib.suppress(FileNotFoundError):
                _write(self.memory_dir / "memory.swap.max", 0)
        else:
            _write(self.memory_dir / "memory.limit_in_bytes", memory_bytes)
            with contextlib.suppress(OSError):  # absent without swap accounting
                _write(self.memory_dir / "memory.memsw.limit_in_bytes", memory_bytes)
        _write(self.pids_dir / "pids.max", max_pids)

    def procs_files(self) -> list[str]:
        """The files a process writes its pid to, to join every controller of this group."""
        return [str(p / "cgroup.procs") for p in self.paths]

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the group for memory."""
        events = _read(self.memory_dir / ("memory.events" if self.v2 else "memory.oom_control"))
        return _counter(events, "oom_kill") > 0

    def pids_refused(self) -> bool:
        """Whether a fork or clone was refused because the group was at its process limit."""
        return _counter(_read(self.pids_dir / "pids.events"), "max") > 0

    def kill_all(self) -> None:
        """SIGKILL whatever is left in the group, until it is empty (a fork bomb refills)."""
        if self.v2:
            with contextlib.suppress(OSError):
                _write(self.pids_dir / "cgroup.kill", 1)
        pause = 0.0002
        for _ in range(500):
            pids = [int(p) for p in _read(self.pids_dir / "cgroup.procs").split()]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # Most often the last process is about gone (exiting, not yet out of the group): look
            # again soon, then less often.
            time.sleep(pause)
            pause = min(pause * 2, 0.002)

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


def _write(path: Path, value: int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _counter(text: str, name: str) -> int:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return 0
