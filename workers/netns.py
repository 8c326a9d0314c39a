"""Loopback-only network namespaces a root worker lends to its sandboxed actions, one action at a
time each (workers/sandbox.py).

Making a network namespace for every action and tearing it down afterwards costs 1-4 ms of the
machine's CPU per action on the hosts measured (bench/sandbox_cpu.py), much of it in a kernel
worker after the action has ended, where the action's own CPU time does not show it (the
teardown cleans up every protocol's per-namespace state). A worker
keeps a few instead, each held open by a `sandbox-exec --netns` child process (its
/proc/PID/ns/net is what an action's sandbox-exec joins while still root).

Never two actions in one namespace at once: an action takes one that no other holds and gives
it back only when its run is over, so no action can reach another's listener on 127.0.0.1 or an
abstract unix socket (those are per network namespace too).

Sequential reuse leaves the next action nothing of the one before, so it finds the namespace
as a new one: a namespace goes back only after the action's cgroup is empty, so every process
of it is dead and every file it had open (each socket) closed; and only if the namespace then
has no socket at all and no TCP connection in TIME_WAIT (/proc/PID/net/sockstat: that also
catches a socket kept alive in flight on a unix socket, and a port a closed connection still
takes), and `lo` has carried no packet (/proc/PID/net/dev: its counters, and the protocols'
in /proc/net/snmp, would tell the next action how much loopback traffic the one before made).
Otherwise it is ended and a fresh one made: an action that used loopback costs what a
namespace of its own did. The action cannot change anything else there: the namespace belongs
to the host's user namespace, not to the action's, so it has no capability over it (no
sysctls, interfaces, addresses, routes or firewall rules; no raw sockets).
"""

import contextlib
import subprocess
import threading
from pathlib import Path


class NamespaceUnavailable(RuntimeError):
    """A holder could not make its namespace; the message says why."""


class Holder:
    """One `sandbox-exec --netns` and the namespace it holds (or, with other `args` and `kind`,
    another kind of namespace: workers/mntns.py)."""

    def __init__(self, starter: str, args: tuple[str, ...] = ("--netns",), kind: str = "net") -> None:
        self.kind = kind
        # Its own session: a signal to the worker's process group does not end it before the
        # worker has ended the actions using it. It dies with the worker anyway: stdin closes.
        self.proc = subprocess.Popen(
            [starter, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={},
            start_new_session=True,
            close_fds=True,
        )
        self._ready = False

    @property
    def path(self) -> str:
        return f"/proc/{self.proc.pid}/ns/{self.kind}"

    def wait_ready(self) -> None:
        """Returns once the namespace exists (at once for one made ahead), or raises."""
        if self._ready:
            return
        assert self.proc.stdout is not None
        if self.proc.stdout.readline() != b"ready\n":
            self.end()
            raise NamespaceUnavailable(
                f"sandbox-exec --netns could not make a network namespace (exit {self.proc.returncode}, "
                "its message is in the worker's log)"
            )
        self._ready = True

    def alive(self) -> bool:
        return self.proc.poll() is None

    def unused(self) -> bool:
        """Whether it is still held, as it was made: no socket, no closed TCP connection, no
        packet on `lo` (see the top)."""
        if not self.alive():
            return False
        try:
            stats = Path(f"/proc/{self.proc.pid}/net/sockstat").read_text()
            devices = Path(f"/proc/{self.proc.pid}/net/dev").read_text()
        except OSError:
            return False
        # "sockets: used N" counts the namespace's sockets of every family; "TCP: ... tw N" its
        # connections in TIME_WAIT, which are no sockets any more but still hold their ports.
        fields = stats.split()
        tw = fields.index("tw") + 1 if "tw" in fields else len(fields)
        if fields[:3] != ["sockets:", "used", "0"] or fields[tw : tw + 1] != ["0"]:
            return False
        # "lo: rx_bytes rx_packets ... (8 receive counters) tx_bytes tx_packets ..."
        lines = devices.splitlines()[2:]
        counters = [line.split(":", 1)[1].split() for line in lines if line.split(":", 1)[0].strip() == "lo"]
        return len(lines) == 1 and len(counters) == 1 and counters[0][1] == counters[0][9] == "0"

    def end(self) -> None:
        """Close its stdin and wait for it: the namespace ends with its last user."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.proc.wait()


class Pool:
    """The namespaces this worker process holds, free ones ready for the next action."""

    def __init__(self) -> None:
        self._free: list[Holder] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self, starter: str) -> Holder:
        """A namespace no running action is in, for one action's whole run."""
        holder = None
        with self._lock:
            while self._free and holder is None:
                holder = self._free.pop()
                if not holder.alive():  # ended by someone else meanwhile: its namespace is gone
                    holder.end()
                    holder = None
        if holder is None:
            holder = Holder(starter)
        holder.wait_ready()
        return holder

    def prepare(self, starter: str) -> None:
        """Make one ahead where none is free, so the next action does not wait for it."""
        with self._lock:
            if self._free or self._closed:
                return
        holder = Holder(starter)
        with self._lock:
            if not self._closed:
                self._free.append(holder)
                return
        holder.end()

    def give_back(self, holder: Holder, emptied: bool) -> None:
        """After an action's run; `emptied`: every process of it is known to be gone."""
        if emptied and holder.unused():
            with self._lock:
                if not self._closed:
                    self._free.append(holder)
                    return
        holder.end()

    def release(self) -> None:
        """At a worker's end: the free ones end now, those in use when given back."""
        with self._lock:
            free, self._free = self._free, []
            self._closed = True
        for holder in free:
            holder.end()
