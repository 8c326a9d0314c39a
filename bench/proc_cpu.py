"""CPU seconds (user + system) of a process and its descendants, read from /proc.

The bench reads it before and after a build, so the difference is what the server (all its
processes, `--processes N` included) spent serving that build.
"""

import os
from collections import defaultdict
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks) of a live process: its own user + system time and that of its
    children it has waited for (proc(5): utime, stime, cutime, cstime)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses; the rest follows the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), sum(int(f) for f in fields[11:15])


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of `root` and every live descendant."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(int(entry))) is not None:
            stats[int(entry)] = found
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in stats.items():
        children[ppid].append(pid)
    ticks, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            ticks += stats[pid][1]
            todo.extend(children[pid])
    return ticks / TICKS_PER_SECOND
