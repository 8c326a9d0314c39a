"""bench/bazel.py in its smoke mode, so the bench cannot rot: real Bazel against ours and a
local disk cache, one round of a tiny workspace. Its figures are checked for being there and
being figures, never for speed (speed is the bench's business, not a test's)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bazel

ROOT = Path(__file__).resolve().parent.parent
ACTIONS = 5
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def row(output: str, label: str) -> list[float]:
    """The figures of every table row that starts with `label`."""
    found = []
    for line in output.splitlines():
        if line.startswith(label + "  "):
            found += [float(n.replace(",", "")) for n in NUMBER.findall(line[len(label) :])]
    return found


def test_the_bazel_bench_prints_its_table_with_figures(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bazel.py"),
            "--actions",
            str(ACTIONS),
            "--rounds",
            "1",
            "--only",
            "ours,disk",
            "--processes",
            "1",
            "--results",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{ACTIONS} actions, 1 round" in done.stdout, done.stdout

    # ours: warm, cold and minimal build seconds, server CPU and CPU per hit (best / median
    # each), then Bazel's profile: cache check and download, the same with
    # --remote_download_minimal, the cold build's cache check, Bazel's CPU.
    ours = row(done.stdout, "ours 1p")
    assert len(ours) == 6 * 2 + 6, done.stdout
    assert all(v > 0 for v in ours[:12]), done.stdout
    # the disk cache has no server: three build times, then the profile's six figures.
    disk = row(done.stdout, "disk cache")
    assert len(disk) == 3 * 2 + 6, done.stdout
    assert all(v > 0 for v in disk[:6]), done.stdout
    assert "WAS NOT MEASURED" not in done.stdout

    [results] = tmp_path.glob("bazel-*.json")
    report = json.loads(results.read_text())
    assert report["actions"] == ACTIONS and not report["not_measured"]
    for label in ("ours 1p", "disk cache"):
        [measured] = report["servers"][label]["rounds"]
        assert measured["warm"]["processes"]["remote cache hit"] == ACTIONS
        profile = measured["warm"]["profile"]
        # Bazel's profile: one cache check and one download per action of the warm build.
        assert profile["cache check"]["events"] == ACTIONS and profile["cache check"]["ms"] > 0
        assert profile["download"]["events"] == ACTIONS and profile["download"]["ms"] > 0
    assert report["servers"]["ours 1p"]["rounds"][0]["warm"]["server_cpu_s"] > 0
