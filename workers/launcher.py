"""A small process, started with the worker, that starts each sandboxed action for it.

Why: starting a process from the worker costs more the larger the worker grows (Celery's
threads, Django, gRPC, the storage clients), and giving the child its cgroups, rlimits and an
unprivileged uid needs either a fork (Python gives up vfork once preexec_fn or a uid change is
asked for) or more programs in the launch chain (a shell for the cgroups and rlimits, setpriv
for the uid: each one an exec, ~1-2 ms here). This launcher is a fresh interpreter of a few
MB, with no threads, that imports nothing but the standard library: its fork is cheap, and the
forked child does all of that itself in a few system calls and then execs bwrap directly.

The worker talks to it over a SOCK_SEQPACKET socket pair made at start. Per action it sends a
new stream socket (the action's), the action's stdout and stderr (SCM_RIGHTS), then on the
action's socket the request as length-prefixed JSON. The launcher answers there with
`pid N`, and `exit N` (a wait status as Python's returncode: -N for signal N) once the process
has exited; it reads `kill` there as a request to kill the process group. It kills the process
group before it reaps the process (daemons an action leaves must not outlive it), so the pid it
kills is always its own child's. If the worker goes away (its end of the pair closes), the
launcher kills every process group it started and exits.

Run as `python -I -S launcher.py FD` by `Launcher.start()`; it must import nothing outside the
standard library.
"""

import contextlib
import ctypes
import errno
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field

# Request bodies are at most this (an action's argv and environment, which the kernel caps lower).
MAX_REQUEST = 64 << 20
REQUEST_TIMEOUT_SECONDS = 30.0
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SETUP_FAILED = 125  # like the shell step this replaces: the chain could not be set up


@dataclass(frozen=True)
class Request:
    """What the forked child does before it execs `argv` (with an empty environment)."""

    argv: list[str]
    procs_files: list[str] = field(default_factory=list)  # cgroup.procs files to join
    rlimits: dict[str, int] = field(default_factory=dict)  # e.g. {"RLIMIT_NOFILE": 4096}, soft = hard
    uid: int | None = None  # set real, effective and saved uid/gid, no groups, no capabilities
    gid: int | None = None


# --- the worker's side ---------------------------------------------------------------------------


class LauncherGone(RuntimeError):
    """The launcher process died while an action was running."""


class Launcher:
    """The worker's handle on its launcher process; safe to use from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env={},
                cwd="/",
            )
        finally:
            theirs.close()
        self._control = ours

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def launch(self, request: Request, stdout: int, stderr: int) -> "Launched":
        """Start `request` with these stdout and stderr; a launcher that died is started again."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with theirs:
                self._send(theirs.fileno(), stdout, stderr)
            body = json.dumps(asdict(request)).encode()
            ours.sendall(len(body).to_bytes(4, "big") + body)
            reply = _read_line(ours)
        except OSError as exc:
            ours.close()
            raise LauncherGone(f"the sandbox launcher cannot be reached: {exc}") from exc
        if not reply.startswith("pid "):
            ours.close()
            raise LauncherGone(f"the sandbox launcher answered {reply!r}")
        return Launched(ours, int(reply.split()[1]))

    def _send(self, *fds: int) -> None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._stop_locked()
                self.start()
            assert self._control is not None
            socket.send_fds(self._control, [b"L"], list(fds))


class Launched:
    """A process the launcher started: readable (`fileno`) once it has exited."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid

    def fileno(self) -> int:
        return self.sock.fileno()

    def kill(self) -> None:
        """SIGKILL its process group, unless it has been reaped already (then that was done)."""
        with contextlib.suppress(OSError):
            self.sock.sendall(b"kill\n")

    def wait(self) -> int:
        """Its exit status as Popen.returncode has it (-N: killed by signal N)."""
        try:
            reply = _read_line(self.sock)
        finally:
            self.sock.close()
        if not reply.startswith("exit "):
            raise LauncherGone(f"the sandbox launcher went away while process {self.pid} ran")
        return int(reply.split()[1])


def _read_line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


# --- the launcher's side --------------------------------------------------------------------------


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_capabilities(libc: ctypes.CDLL) -> None:
    """No capabilities left in any set, the inheritable one included (what `setpriv
    --inh-caps=-all` did): nothing survives the exec of bwrap."""
    data = (_Data * 2)()
    if libc.capset(ctypes.byref(_Header(_LINUX_CAPABILITY_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _child(request: dict, stdout: int, stderr: int, libc: ctypes.CDLL) -> None:
    """In the forked child: never returns."""
    try:
        os.setsid()  # its own session and process group, so one kill reaches all it starts
        # Python ignores these; an ignored signal stays ignored across exec.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        pid = str(os.getpid()).encode()
        for procs in request["procs_files"]:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        for name, value in request["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (value, value))
        if request["uid"] is not None:
            os.setgroups([])
            os.setresgid(request["gid"], request["gid"], request["gid"])
            os.setresuid(request["uid"], request["uid"], request["uid"])
            _drop_capabilities(libc)
    except OSError as exc:
        os.write(2, f"sandbox launcher: {exc}\n".encode())
        os._exit(_SETUP_FAILED)
    argv = request["argv"]
    try:
        os.execve(argv[0], argv, {})
    except OSError as exc:
        os.write(2, f"cannot run {argv[0]!r}: {exc.strerror}\n".encode())
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


class _Running:
    def __init__(self, sock: socket.socket, pid: int, pidfd: int) -> None:
        self.sock = sock
        self.pid = pid
        self.pidfd = pidfd
        self.worker_gone = False

    def kill_group(self) -> None:
        # Not reaped yet, so the group id is still this child's.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def _serve(control: socket.socket) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, None)
    running: dict[int, _Running] = {}  # by pidfd

    def start() -> bool:
        msg, fds, _flags, _addr = socket.recv_fds(control, 16, 3)
        if not msg:
            return False
        for fd in fds:
            os.set_inheritable(fd, False)
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            return True
        sock = socket.socket(fileno=fds[0])
        try:
            sock.settimeout(REQUEST_TIMEOUT_SECONDS)
            size = int.from_bytes(_recv_exactly(sock, 4), "big")
            if size > MAX_REQUEST:
                raise ValueError(f"request of {size} bytes")
            request = json.loads(_recv_exactly(sock, size))
            pid = os.fork()
            if pid == 0:
                _child(request, fds[1], fds[2], libc)
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                sock.sendall(f"error {exc}\n".encode())
            sock.close()
            return True
        finally:
            os.close(fds[1])
            os.close(fds[2])
        sock.settimeout(None)
        pidfd = os.pidfd_open(pid)
        child = running[pidfd] = _Running(sock, pid, pidfd)
        selector.register(pidfd, selectors.EVENT_READ, child)
        selector.register(sock, selectors.EVENT_READ, child)
        with contextlib.suppress(OSError):
            sock.sendall(f"pid {pid}\n".encode())
        return True

    def reap(child: _Running) -> None:
        child.kill_group()
        _pid, status = os.waitpid(child.pid, 0)
        selector.unregister(child.pidfd)
        os.close(child.pidfd)
        del running[child.pidfd]
        if not child.worker_gone:
            selector.unregister(child.sock)
            with contextlib.suppress(OSError):
                child.sock.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
        child.sock.close()

    def from_worker(child: _Running) -> None:
        try:
            data = child.sock.recv(64)
        except OSError:
            data = b""
        if data:
            child.kill_group()  # `kill`
        else:
            # The worker dropped it (its thread died): nothing must be left running.
            child.worker_gone = True
            selector.unregister(child.sock)
            child.kill_group()

    while True:
        for key, _events in selector.select():
            child = key.data
            if child is None:
                if not start():
                    for left in list(running.values()):
                        left.kill_group()
                    return
            elif not _is_current(running, child):
                continue  # reaped earlier in this round
            elif key.fileobj == child.pidfd:
                reap(child)
            else:
                from_worker(child)


def _is_current(running: dict[int, _Running], child: _Running) -> bool:
    return running.get(child.pidfd) is child


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise OSError(errno.ECONNRESET, "the worker closed the request")
        data += chunk
    return bytes(data)


def main() -> None:
    # A Ctrl-C meant for the worker must not end its actions' launcher first; it ends when the
    # worker closes its end of the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=int(sys.argv[1]))
    os.set_inheritable(control.fileno(), False)
    _serve(control)


if __name__ == "__main__":
    main()
