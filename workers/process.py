"""Running an action's command: its own session, a deadline, and a kill on cancel or timeout."""

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

OK = "ok"
TIMED_OUT = "timed-out"
CANCELLED = "cancelled"
LIMITED = "limited"  # killed because `watch` said it went past a limit

# How often a running command checks its cancel flag; exit is noticed at once via a pidfd.
CANCEL_CHECK_SECONDS = 0.1


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    how: str


def run(
    argv: list[str],
    cwd: Path | None,
    env: dict[str, str],
    stdout: Path,
    stderr: Path,
    timeout: float,
    cancelled: threading.Event,
    group_file: Path | None = None,
    watch: Callable[[], str | None] | None = None,
) -> Outcome:
    """Run `argv` to completion, deadline, cancellation or a limit; every process it left is
    killed.

    The command gets a session (and so a process group) of its own, so a kill reaches the
    shell and everything it started, not only the first process. Its group id goes to
    `group_file`, so a worker that finds this one dead can kill what it left running. `watch`,
    called while it runs, ends it by returning a reason.
    """
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            # Like a shell: 127 when the program is missing, 126 when it cannot run.
            err.write(f"cannot run {argv[0]!r}: {exc.strerror}\n".encode())
            return Outcome(127 if isinstance(exc, FileNotFoundError) else 126, OK)
    return supervise(proc, timeout, cancelled, group_file, watch)


def supervise(
    proc: subprocess.Popen[bytes],
    timeout: float,
    cancelled: threading.Event,
    group_file: Path | None = None,
    watch: Callable[[], str | None] | None = None,
) -> Outcome:
    """See a started command (its own session) to its end, as `run` does."""
    if group_file is not None:
        group_file.write_text(str(proc.pid))
    how = _wait(proc, time.monotonic() + timeout, cancelled, watch)
    _kill_group(proc.pid)
    code = proc.wait()
    # A command killed by a signal reports 128+N, as a shell would.
    return Outcome(128 - code if code < 0 else code, how)


def _wait(
    proc: subprocess.Popen[bytes],
    deadline: float,
    cancelled: threading.Event,
    watch: Callable[[], str | None] | None,
) -> str:
    pidfd = os.pidfd_open(proc.pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return TIMED_OUT
            if poller.poll(min(remaining, CANCEL_CHECK_SECONDS) * 1000):
                return OK
            if cancelled.is_set():
                return CANCELLED
            if watch is not None and watch():
                return LIMITED
    finally:
        os.close(pidfd)


def kill_left_behind(group_file: Path) -> None:
    """Kill the process group recorded by a run whose worker died before it could."""
    try:
        pgid = int(group_file.read_text())
    except (OSError, ValueError):
        return
    if pgid > 1:
        _kill_group(pgid)


def _kill_group(pgid: int) -> None:
    # Also after a normal exit: daemons the action left behind must not outlive it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
