"""The mount namespace a root worker starts its sandboxed actions' bwrap from: the host's, less
the mounts no action needs (workers/sandbox.py).

bwrap reads the whole mount table again for each mount it makes (/proc/self/mountinfo, ~15
times per action), and the kernel writes that table out line by line: started from the host's
namespace, every action paid for /sys, a dozen cgroup hierarchies, /dev/shm, /dev/pts and
whatever else the host has mounted, though no action sees any of it (bwrap binds what the
sandbox gets into a root of its own and detaches everything else). A worker keeps one
namespace made by a `sandbox-exec --mntns` child (a copy of the host's with those mounts
detached) and each action's sandbox-exec joins it while still root, before bwrap: on the host
measured that took the table from 20 mounts to 3 and ~0.4-1.3 ms of CPU off every action
(bench/README.md).

What stays: `/`, every mount at, above or below what the sandbox binds or bwrap needs (/usr,
/etc, the other system directories, REAPI_SANDBOX_READ_ONLY, the exec directory, /proc and
what is below it), and /dev and /tmp themselves (bwrap binds /dev's device nodes, and mounts
its own root at /tmp). The namespace is a slave of the host's, so what the host mounts where
it shares propagation reaches it; and when the host's mount table changes (a poll on
/proc/self/mountinfo says so) in what the namespace keeps (a mount, an unmount or a remount
there), or the namespace's own table changes (a mount of it is detached when the host removes
or renames over its mountpoint), the next action gets a new namespace, made from the table as
it is then. One an action was given stays until that action's run is over. Where the holder
cannot be made, actions start from the worker's own namespace, as before.
"""

import logging
import os
import re
import select
import threading
from collections.abc import Callable, Iterable

from workers import netns

log = logging.getLogger(__name__)


class Holder(netns.Holder):
    """One `sandbox-exec --mntns MOUNTPOINT...` and the mount namespace it holds."""

    def __init__(self, starter: str, detach: list[str]) -> None:
        super().__init__(starter, ("--mntns", *detach), "mnt")


def mountpoints(mountinfo: str) -> list[str]:
    """The mountpoints of a /proc/PID/mountinfo text, in its order."""
    return [_unescape(line.split()[4]) for line in mountinfo.splitlines() if len(line.split()) > 4]


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in a path as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def to_detach(mounts: list[str], keep_trees: Iterable[str], keep_points: Iterable[str]) -> list[str]:
    """The mountpoints a holder detaches, each once and none below another (detaching takes what
    is below along): every mount but `/`, those at, above or below a path of `keep_trees`, and
    those at or above a path of `keep_points`."""
    trees, points = list(keep_trees), list(keep_points)

    def needed(mount: str) -> bool:
        return (
            mount == "/"
            or any(_within(mount, tree) or _within(tree, mount) for tree in trees)
            or any(_within(point, mount) for point in points)
        )

    detach: list[str] = []
    # Shallower first: the table does not always list a mount after the one it is on.
    for mount in sorted(mounts, key=lambda mount: mount.rstrip("/").count("/")):
        if not needed(mount) and not any(_within(mount, done) for done in detach):
            detach.append(mount)
    return detach


class Keeper:
    """This worker process's namespace for its actions, made anew when the host's mounts change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Holder | None = None
        self._users: dict[Holder, int] = {}
        self._retired: set[Holder] = set()
        self._watch: int | None = None  # the worker's /proc/self/mountinfo
        self._holder_watch: int | None = None  # the current holder's
        self._kept: list[str] = []  # the mountinfo lines of what the current namespace keeps
        self._failed = False

    def take(self, starter: str, keep: Callable[[], tuple[list[str], list[str]]]) -> Holder | None:
        """The namespace for one action's launch, until give_back; None: the worker's own.
        `keep`: the trees and the points to keep (see to_detach), asked for only when a namespace
        is made or the host's table changed."""
        with self._lock:
            if self._failed:
                return None
            holder = self._current
            stale = holder is None or not holder.alive() or _changed(self._holder_watch)
            if stale or self._changed():
                table = self._table(*keep())
                if stale or table[1] != self._kept:
                    self._retire(holder)
                    holder = self._current = self._start(starter, table)
            if holder is None:
                return None
            self._users[holder] = self._users.get(holder, 0) + 1
            return holder

    def give_back(self, holder: Holder | None) -> None:
        if holder is None:
            return
        with self._lock:
            self._users[holder] -= 1
            if self._users[holder] == 0 and holder in self._retired:
                del self._users[holder]
                self._retired.discard(holder)
                holder.end()

    def release(self) -> None:
        """At a worker's end: the namespace ends now, or when its last action is over."""
        with self._lock:
            self._retire(self._current)
            self._current = None
            self._failed = True  # no new one
            for fd in (self._watch, self._holder_watch):
                if fd is not None:
                    os.close(fd)
            self._watch = self._holder_watch = None

    def _changed(self) -> bool:
        """Whether the worker's mount table changed since the last look."""
        return _changed(self._watch)

    def _retire(self, holder: Holder | None) -> None:
        if holder is None:
            return
        if self._users.get(holder, 0) == 0:
            self._users.pop(holder, None)
            holder.end()
        else:
            self._retired.add(holder)

    def _table(self, keep_trees: Iterable[str], keep_points: Iterable[str]) -> tuple[list[str], list[str]]:
        """(what to detach, the mountinfo lines of what stays) as the host's table is now. A
        change elsewhere (what a new namespace would detach anyway) leaves the current one as
        good as new; a change to what it keeps (a mount, an unmount, a remount) does not."""
        if self._watch is None:
            self._watch = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        # Read after the watch is reset: a change from here on is seen by the next take.
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
        detach = to_detach(mountpoints("\n".join(lines)), keep_trees, keep_points)
        kept = [
            line
            for line in lines
            if not any(_within(point, d) for point in mountpoints(line) for d in detach)
        ]
        return detach, kept

    def _start(self, starter: str, table: tuple[list[str], list[str]]) -> Holder | None:
        detach, self._kept = table
        if self._holder_watch is not None:
            os.close(self._holder_watch)
            self._holder_watch = None
        holder = Holder(starter, detach)
        try:
            holder.wait_ready()
            # Its table may change without the worker's: a mount of its own is detached when
            # the host removes or renames over its mountpoint. It is then not lent again.
            self._holder_watch = os.open(f"/proc/{holder.proc.pid}/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        except (netns.NamespaceUnavailable, OSError):
            holder.end()
            log.warning(
                "sandbox-exec --mntns failed (its message is in the worker's log); "
                "actions start from the worker's own mount namespace"
            )
            self._failed = True
            return None
        return holder


def _changed(watch: int | None) -> bool:
    """Whether the mount table a mountinfo file descriptor shows changed since the last look
    (the kernel flags a change to each poller of it with POLLPRI, once); True without one."""
    if watch is None:
        return True
    poller = select.poll()
    poller.register(watch, select.POLLPRI)
    return bool(poller.poll(0))
