"""Real Bazel (Debian's bazel-bootstrap, 4.2.3) for end-to-end tests.

Workspaces are made of genrules only: they build offline, where C++ rules would need the
network. Each Bazel gets its own output root under the test's temp dir and is shut down after.
"""

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

KIB = 1024


def genrule_sizes(count: int, smallest: int = KIB, largest: int = 5 * 1024 * KIB) -> list[int]:
    """`count` output sizes spread geometrically from `smallest` to `largest` bytes."""
    ratio = (largest / smallest) ** (1 / max(count - 1, 1))
    return [int(smallest * ratio**i) for i in range(count)]


def write_workspace(root: Path, sizes: list[int], salt: str = "", exec_properties: str = "") -> list[str]:
    """A workspace of one genrule per size plus aggregators that consume them.

    Returns the labels of the outputs; `salt` changes every command (so a fresh cache).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "WORKSPACE").write_text('workspace(name = "e2e")\n')
    rules = []
    for i, size in enumerate(sizes):
        rules.append(
            f"""genrule(
    name = "gen{i}",
    outs = ["gen{i}.txt"],
    cmd = "echo 'rule {i} {salt}' > $@ && head -c {size} /dev/zero | tr -c a a >> $@",{exec_properties}
)
"""
        )
    groups = [list(range(i, min(i + 10, len(sizes)))) for i in range(0, len(sizes), 10)]
    for g, members in enumerate(groups):
        srcs = ", ".join(f'":gen{i}"' for i in members)
        rules.append(
            f"""genrule(
    name = "sum{g}",
    srcs = [{srcs}],
    outs = ["sum{g}.txt"],
    cmd = "sha256sum $(SRCS) | sed 's| .*/| |' > $@",{exec_properties}
)
"""
        )
    (root / "BUILD").write_text("\n".join(rules))
    return [f"//:gen{i}" for i in range(len(sizes))] + [f"//:sum{g}" for g in range(len(groups))]


@dataclass
class BuildResult:
    returncode: int
    output: str
    processes: dict[str, int] = field(default_factory=dict)

    @property
    def actions(self) -> int:
        return sum(n for kind, n in self.processes.items() if kind != "internal")


# Bazel 4.2.3's summary: "INFO: 112 processes: 2 internal, 110 remote cache hit."
_SUMMARY = re.compile(r"INFO: (\d+) process(?:es)?(?:: (.*?))?\.?$", re.M)


def parse_processes(output: str) -> dict[str, int]:
    found = _SUMMARY.findall(output)
    if not found:
        return {}
    _total, detail = found[-1]
    counts = {}
    for part in detail.split(","):
        part = part.strip().rstrip(".")
        if part:
            number, _, kind = part.partition(" ")
            counts[kind] = int(number)
    return counts


@dataclass
class Bazel:
    workspace: Path
    output_root: Path
    startup: tuple[str, ...] = ()

    def run(self, *args: str, timeout: float = 600) -> BuildResult:
        cmd = [
            "bazel",
            f"--output_user_root={self.output_root}",
            "--nohome_rc",
            "--max_idle_secs=120",
            *self.startup,
            *args,
        ]
        proc = subprocess.run(cmd, cwd=self.workspace, capture_output=True, text=True, timeout=timeout)
        output = proc.stdout + proc.stderr
        return BuildResult(proc.returncode, output, parse_processes(output))

    def build(self, *flags: str, targets: tuple[str, ...] = ("//...",)) -> BuildResult:
        return self.run("build", "--nosandbox_debug", "--color=no", "--curses=no", *flags, *targets)

    def clean(self) -> None:
        result = self.run("clean")
        assert result.returncode == 0, result.output

    def outputs(self) -> dict[str, bytes]:
        bin_dir = self.workspace / "bazel-bin"
        return {p.name: p.read_bytes() for p in sorted(bin_dir.glob("*.txt"))}

    def shutdown(self) -> None:
        subprocess.run(
            ["bazel", f"--output_user_root={self.output_root}", "--nohome_rc", *self.startup, "shutdown"],
            cwd=self.workspace,
            capture_output=True,
            timeout=60,
        )


@contextmanager
def bazel_in(tmp: Path, startup: tuple[str, ...] = ()) -> Iterator[Bazel]:
    if shutil.which("bazel") is None:
        raise RuntimeError("bazel is not installed: `make test-deps` installs Debian's bazel-bootstrap")
    b = Bazel(tmp / "ws", tmp / "bazel-root", startup)
    b.workspace.mkdir(parents=True, exist_ok=True)
    try:
        yield b
    finally:
        b.shutdown()
        # Bazel leaves read-only directories behind; make them removable.
        subprocess.run(["chmod", "-R", "u+w", str(b.output_root)], capture_output=True)
