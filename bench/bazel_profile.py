"""Bazel's own profile (`--profile=FILE`, a Chrome trace in JSON): the time its remote cache
calls took, summed per kind of event.

Bazel 4.2.3 writes one complete event ("ph": "X", microseconds) per spawn for each of these
(RemoteSpawnCache.lookup: a cache check for every spawn, a download for every hit); their durations are wall time seen from Bazel's side: the RPCs, and
any wait for a CPU on a busy machine.
"""

import gzip
import json
from pathlib import Path

# category -> (event name, what the report calls it)
EVENTS = {
    "remote action cache check": ("check cache hit", "cache check"),
    "remote output download": ("download outputs", "download"),
}
# Not counted: "upload outputs" (category "Remote execution upload time"), which Bazel 4.2.3
# records for only a few of a cold build's spawns.


def remote_totals(path: Path) -> dict[str, dict[str, float]]:
    """{"cache check": {"events": n, "ms": total}, "download": {…}} for one build."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    totals = {label: {"events": 0, "ms": 0.0} for _, label in EVENTS.values()}
    for event in json.loads(raw)["traceEvents"]:
        kind = EVENTS.get(event.get("cat", ""))
        if kind and event.get("ph") == "X" and event.get("name") == kind[0]:
            totals[kind[1]]["events"] += 1
            totals[kind[1]]["ms"] += event.get("dur", 0) / 1000
    return totals
