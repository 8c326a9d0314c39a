"""Children that die with the process supervising them.

A supervisor (`runall`, `reapi serve --processes N`) stops its children on SIGTERM or SIGINT,
but a supervisor killed outright (SIGKILL, the OOM killer) runs no handler: its children would
live on, holding their ports. So each child asks the kernel, between fork and exec, for SIGTERM
when its parent dies (prctl PR_SET_PDEATHSIG, Linux).
"""

import ctypes
import signal
import subprocess

PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_parent() -> None:
    # Between fork and exec: the supervisors start their children before any thread of theirs,
    # so nothing here can deadlock on a lock another thread held at fork.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def start_child(argv: list[str]) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(argv, preexec_fn=_die_with_parent)
