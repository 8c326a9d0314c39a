"""Where a bench run's figures go: a JSON file per run, stamped with when it started, how long
it took and how busy the machine was (the figures mean little without that)."""

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def begin(workdir: Path, log: Callable[[str], None]) -> tuple[float, float]:
    """Say where the run keeps its data and how busy the machine is; (start time, load)."""
    log(f"bench: data in {workdir}; {os.cpu_count()} cores, Python {platform.python_version()}")
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"warning: load average {load:.2f} before the run: other work shares these cores")
    return time.time(), load


def write(directory: Path, kind: str, started: float, load_before: float, fields: dict[str, Any]) -> Path:
    """`directory`/`kind`-<time>.json holding the run's stamp and `fields`; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / time.strftime(f"{kind}-%Y%m%d-%H%M%S.json")
    stamp = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "cores": os.cpu_count(),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    out.write_text(json.dumps({**stamp, **fields}, indent=2) + "\n")
    return out
