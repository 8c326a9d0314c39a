"""Bazel-level capacity bench: real Bazel 4.2.3 builds a genrule workspace against each server.

    .venv/bin/python bench/bazel.py [--actions 121] [--rounds 3]
        [--only ours,bare,buildgrid,disk] [--processes 1,2] [--largest-kib 256]
        [--bazel-flags "--jobs=4"] [--keep]

Servers under test: ours (`reapi serve --processes N`, auth on, a tenant and PAT of its own per
round), bench/bare.py (dicts, no auth, no storage: what Python's gRPC allows on this machine at
the moment of the run), BuildGrid (bench/servers.py installs and starts it) and a local
`--disk_cache` (no server). Each has its own Bazel server (output base), started once and kept
warm. Every round, for every server in turn (A B C D, A B C D, ... so the machine's noise
spreads evenly): a fresh server with an empty cache; a cold build; `bazel clean` and a warm
build (every action a remote cache hit); `bazel clean` and a warm build with
`--remote_download_minimal`. For each build: its wall time, the CPU seconds of the server's
process tree (/proc, before and after) and Bazel's own profile (time in cache checks and output
downloads).

Prints the figures (best and median of the rounds), checks the targets and writes JSON to
bench/results/bazel-<time>.json. Exits 1 when a target is missed by every process count of
ours, or when a server could not be measured.
"""

import argparse
import hashlib
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(1, str(BENCH))

import bazel_profile  # noqa: E402
import bazel_workspace  # noqa: E402
import proc_cpu  # noqa: E402
import result_files  # noqa: E402
import servers  # noqa: E402
import text_table  # noqa: E402

from tests.support.bazel import BuildResult, parse_processes  # noqa: E402

SUBJECTS = ("ours", "bare", "buildgrid", "disk")
PHASES = ("cold", "warm", "minimal")
COLD_TARGET_ACTIONS = 1000
BUILD_TIMEOUT = 1800.0


def log(line: str) -> None:
    print(line, flush=True)


class NotMeasured(RuntimeError):
    """A server could not be measured: it did not start, or a build failed or missed."""


# --- Bazel ------------------------------------------------------------------------------------


class BenchBazel:
    """One Bazel server (its own output base and workspace copy) for one server under test."""

    def __init__(self, workdir: Path, key: str, actions: int, largest: int, extra_flags: list[str]) -> None:
        self.workspace = workdir / "workspaces" / key
        self.user_root = servers.apart(workdir, f"bazel-{key}")
        self.output_base = self.user_root / key
        self.extra_flags = extra_flags
        self.labels = bazel_workspace.write(self.workspace, actions, largest)
        self.profiles = workdir / "profiles" / key
        self.profiles.mkdir(parents=True)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # One long idle limit: the rounds of the other servers come between two uses.
        cmd = [
            "bazel",
            f"--output_user_root={self.user_root}",
            f"--output_base={self.output_base}",
            "--nohome_rc",
            "--max_idle_secs=3600",
            *args,
        ]
        return subprocess.run(cmd, cwd=self.workspace, capture_output=True, text=True, timeout=BUILD_TIMEOUT)

    def build(self, *flags: str) -> BuildResult:
        proc = self._run("build", "--color=no", "--curses=no", *self.extra_flags, *flags, "//...")
        output = proc.stdout + proc.stderr
        return BuildResult(proc.returncode, output, parse_processes(output))

    def warm_up(self) -> None:
        """Start the JVM and load and analyse the workspace, so round 1 starts warm too."""
        done = self._run("build", "--nobuild", "--color=no", "--curses=no", *self.extra_flags, "//...")
        if done.returncode != 0:
            raise NotMeasured(f"bazel did not load the workspace:\n{done.stderr[-3000:]}")

    def clean(self) -> None:
        done = self._run("clean")
        if done.returncode != 0:
            raise NotMeasured(f"bazel clean failed:\n{done.stderr[-3000:]}")

    def server_pid(self) -> int | None:
        try:
            return int((self.output_base / "server" / "server.pid.txt").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def outputs(self) -> tuple[int, str]:
        """How many outputs Bazel left in bazel-bin, and one digest over their names and bytes."""
        h = hashlib.sha256()
        paths = sorted((self.workspace / "bazel-bin").glob("*.txt"))
        for path in paths:
            h.update(path.name.encode() + b"\0" + path.read_bytes())
        return len(paths), h.hexdigest()

    def shutdown(self) -> None:
        subprocess.run(
            [
                "bazel",
                f"--output_user_root={self.user_root}",
                f"--output_base={self.output_base}",
                "--nohome_rc",
                "shutdown",
            ],
            cwd=self.workspace,
            capture_output=True,
            timeout=120,
        )


# --- the servers under test -------------------------------------------------------------------


@dataclass
class Endpoint:
    """What Bazel is told (flags) and whose CPU is counted (the server's pid, none for a disk cache)."""

    flags: tuple[str, ...]
    pid: int | None


@dataclass
class Subject:
    label: str
    key: str
    serve: Callable[[int], AbstractContextManager[Endpoint]]
    bazel: BenchBazel | None = None
    rounds: list[dict] = field(default_factory=list)
    error: str = ""


def ours_subject(ours: servers.Ours, processes: int) -> Subject:
    @contextmanager
    def serve(r: int) -> Iterator[Endpoint]:
        # A tenant of its own each round: an empty cache, as a fresh instance has.
        ours.add_tenant(f"bazel-r{r}-{processes}p")
        with ours.serve(processes, None) as running:
            flags = (f"--remote_cache=grpc://{running.address}", f"--remote_header=X-Aspect={ours.pat}")
            yield Endpoint(flags, running.pid)

    return Subject(f"ours {processes}p", f"ours-{processes}p", serve)


def bare_subject(workdir: Path) -> Subject:
    @contextmanager
    def serve(r: int) -> Iterator[Endpoint]:
        with servers.bare(workdir / f"round{r}") as running:
            yield Endpoint((f"--remote_cache=grpc://{running.address}",), running.pid)

    return Subject("bare grpcio", "bare", serve)


def buildgrid_subject(workdir: Path, version: str) -> Subject:
    @contextmanager
    def serve(r: int) -> Iterator[Endpoint]:
        with servers.buildgrid(workdir, name=f"buildgrid-round{r}") as running:
            yield Endpoint((f"--remote_cache=grpc://{running.address}",), running.pid)

    return Subject(f"BuildGrid {version}", "buildgrid", serve)


def disk_subject(workdir: Path) -> Subject:
    @contextmanager
    def serve(r: int) -> Iterator[Endpoint]:
        yield Endpoint((f"--disk_cache={servers.apart(workdir, f'round{r}') / 'disk-cache'}",), None)

    return Subject("disk cache", "disk", serve)


# --- one round --------------------------------------------------------------------------------


def cpu_since(pid: int | None, before: float | None) -> float | None:
    return proc_cpu.tree_cpu_seconds(pid) - before if pid and before is not None else None


def measured_build(bazel: BenchBazel, endpoint: Endpoint, profile: Path, *flags: str) -> dict:
    jvm = bazel.server_pid()
    jvm_before = proc_cpu.tree_cpu_seconds(jvm) if jvm else None
    server_before = proc_cpu.tree_cpu_seconds(endpoint.pid) if endpoint.pid else None
    t0 = time.perf_counter()
    result = bazel.build(*endpoint.flags, f"--profile={profile}", "--noslim_profile", *flags)
    seconds = time.perf_counter() - t0
    server_cpu = cpu_since(endpoint.pid, server_before)
    # A restarted JVM (another pid) would make the difference meaningless.
    bazel_cpu = cpu_since(jvm, jvm_before) if jvm == bazel.server_pid() else None
    if result.returncode != 0:
        raise NotMeasured(f"bazel build {' '.join(flags)} failed:\n{result.output[-3000:]}")
    return {
        "seconds": seconds,
        "server_cpu_s": server_cpu,
        "bazel_cpu_s": bazel_cpu,
        "processes": result.processes,
        "profile": bazel_profile.remote_totals(profile),
    }


def one_round(subject: Subject, r: int, actions: int) -> dict:
    bazel = subject.bazel
    assert bazel is not None
    with subject.serve(r) as endpoint:
        bazel.clean()
        cold = measured_build(bazel, endpoint, bazel.profiles / f"r{r}-cold.json")
        hits = cold["processes"].get("remote cache hit", 0)
        executed = sum(n for kind, n in cold["processes"].items() if kind != "internal")
        if hits or executed != actions:
            raise NotMeasured(f"the cold build was not cold: {cold['processes']}")
        built = bazel.outputs()
        if built[0] != actions:
            raise NotMeasured(f"the cold build left {built[0]} outputs, not {actions}")

        bazel.clean()
        warm = measured_build(bazel, endpoint, bazel.profiles / f"r{r}-warm.json")
        if warm["processes"].get("remote cache hit") != actions:
            raise NotMeasured(f"the warm build missed the cache: {warm['processes']}")
        if bazel.outputs() != built:
            raise NotMeasured("the warm build's outputs differ from the cold build's")

        bazel.clean()
        minimal = measured_build(
            bazel, endpoint, bazel.profiles / f"r{r}-minimal.json", "--remote_download_minimal"
        )
        if minimal["processes"].get("remote cache hit") != actions:
            raise NotMeasured(f"the --remote_download_minimal build missed the cache: {minimal['processes']}")
        if bazel.outputs()[0]:
            raise NotMeasured("the --remote_download_minimal build downloaded outputs")
    return {"round": r, "cold": cold, "warm": warm, "minimal": minimal}


# --- report -----------------------------------------------------------------------------------


def samples(subject: Subject, phase: str, key: str, per: float = 1.0) -> list[float]:
    values = [rnd[phase][key] for rnd in subject.rounds]
    return [v / per for v in values if v is not None]


def profile_samples(subject: Subject, phase: str, what: str, per: float) -> list[float]:
    return [rnd[phase]["profile"][what]["ms"] / per for rnd in subject.rounds]


def best(values: list[float]) -> float | None:
    return min(values) if values else None


def cell(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "-"
    return f"{min(values) * scale:.{digits}f} / {statistics.median(values) * scale:.{digits}f}"


def median_cell(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f}" if values else "-"


def tables(measured: list[Subject], actions: int, rounds: int) -> str:
    builds = [
        [
            "server",
            "warm build s",
            "cold build s",
            "warm, minimal s",
            "server CPU, warm ms",
            "per hit action ms",
            "per hit, minimal ms",
        ]
    ]
    for s in measured:
        builds.append(
            [
                s.label,
                cell(samples(s, "warm", "seconds")),
                cell(samples(s, "cold", "seconds")),
                cell(samples(s, "minimal", "seconds")),
                cell(samples(s, "warm", "server_cpu_s"), 1000, 0),
                cell(samples(s, "warm", "server_cpu_s", actions), 1000),
                cell(samples(s, "minimal", "server_cpu_s", actions), 1000),
            ]
        )
    profile = [
        [
            "server",
            "warm: check",
            "warm: download",
            "minimal: check",
            "minimal: download",
            "cold: check",
            "Bazel CPU, warm ms",
        ]
    ]
    for s in measured:
        profile.append(
            [
                s.label,
                median_cell(profile_samples(s, "warm", "cache check", actions)),
                median_cell(profile_samples(s, "warm", "download", actions)),
                median_cell(profile_samples(s, "minimal", "cache check", actions)),
                median_cell(profile_samples(s, "minimal", "download", actions)),
                median_cell(profile_samples(s, "cold", "cache check", actions)),
                median_cell([v * 1000 for v in samples(s, "warm", "bazel_cpu_s")], 0),
            ]
        )
    return (
        f"{actions} actions, {rounds} round{'s' if rounds > 1 else ''}; each cell best / median of "
        "the rounds\n"
        + text_table.render(builds)
        + "\n\nBazel's profile, ms per action (median of the rounds); Bazel's own CPU for the warm build\n"
        + text_table.render(profile)
    )


@dataclass
class Check:
    name: str
    verdict: str  # "PASS", "FAIL" or "not checked"
    detail: str


def ratio_check(
    name: str,
    ours: list[Subject],
    other: Subject | None,
    bound: float,
    figure: Callable[[Subject], float | None],
) -> Check:
    if other is None or not ours:
        return Check(name, "not checked", "needs ours and the server compared with, measured")
    theirs = figure(other)
    parts, met = [], False
    for s in ours:
        mine = figure(s)
        if mine is None or not theirs:
            parts.append(f"{s.label} -")
            continue
        ratio = mine / theirs
        met = met or ratio <= bound
        parts.append(f"{s.label} {ratio:.2f}x {'pass' if ratio <= bound else 'FAIL'}")
    return Check(name, "PASS" if met else "FAIL", ", ".join(parts))


def checks(measured: list[Subject], actions: int) -> list[Check]:
    ours = [s for s in measured if s.key.startswith("ours")]
    bare = next((s for s in measured if s.key == "bare"), None)
    bg = next((s for s in measured if s.key == "buildgrid"), None)

    def cpu_per_hit(s: Subject) -> float | None:
        return best(samples(s, "warm", "server_cpu_s", actions))

    def warm(s: Subject) -> float | None:
        return best(samples(s, "warm", "seconds"))

    def cold(s: Subject) -> float | None:
        return best(samples(s, "cold", "seconds"))

    found = [
        ratio_check("server CPU per cache-hit action <= 1.1x bare grpcio's", ours, bare, 1.1, cpu_per_hit),
        ratio_check("server CPU per cache-hit action <= 0.6x BuildGrid's", ours, bg, 0.6, cpu_per_hit),
        ratio_check("warm build no slower than bare grpcio's (<= 1.00x)", ours, bare, 1.0, warm),
    ]
    cold_check = ratio_check(
        f"cold build of {COLD_TARGET_ACTIONS} actions <= 1.1x bare grpcio's", ours, bare, 1.1, cold
    )
    if actions < COLD_TARGET_ACTIONS and cold_check.verdict != "not checked":
        cold_check = Check(
            cold_check.name,
            "not checked",
            f"{actions} actions (--actions {COLD_TARGET_ACTIONS}): {cold_check.detail}",
        )
    found.append(cold_check)
    return found


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--actions", type=int, default=121, help="genrule actions in the workspace (default 121)"
    )
    parser.add_argument(
        "--largest-kib",
        type=int,
        default=bazel_workspace.LARGEST // 1024,
        help="the largest output in KiB; sizes spread from 256 B up to it (default 256)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server, interleaved (default 3)")
    parser.add_argument(
        "--only",
        default=",".join(SUBJECTS),
        help=f"servers to measure, of {','.join(SUBJECTS)} (default: all)",
    )
    parser.add_argument("--processes", default="1,2", help="our server's process counts (default 1,2)")
    parser.add_argument(
        "--bazel-flags", default="", help='more flags for every build, e.g. "--jobs=8" (default: none)'
    )
    parser.add_argument("--results", type=Path, default=BENCH / "results", help="where the JSON goes")
    parser.add_argument("--keep", action="store_true", help="keep the throw-away directory")
    args = parser.parse_args()
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    if not only or set(only) - set(SUBJECTS):
        parser.error(f"--only takes {', '.join(SUBJECTS)}, not {args.only!r}")
    if args.actions < 1 or args.rounds < 1:
        parser.error("--actions and --rounds must be at least 1")
    processes = [int(p) for p in args.processes.split(",") if p.strip()]
    extra_flags = shlex.split(args.bazel_flags)
    if shutil.which("bazel") is None:
        log("bazel is not installed: `make test-deps` installs Debian's bazel-bootstrap")
        return 1

    workdir = servers.workdir()
    started, load_before = result_files.begin(workdir, log)

    subjects: list[Subject] = []
    unmeasured: list[tuple[str, str]] = []  # (server, why)
    try:
        for key in only:
            if key == "ours":
                ours = servers.Ours(workdir)
                log("ours: migrating a throw-away database …")
                ours.prepare()
                subjects += [ours_subject(ours, n) for n in processes]
            elif key == "bare":
                subjects.append(bare_subject(workdir))
            elif key == "buildgrid":
                try:
                    subjects.append(buildgrid_subject(workdir, servers.install_buildgrid(log)))
                except servers.BuildGridUnavailable as exc:
                    unmeasured.append(("BuildGrid", str(exc)))
            else:
                subjects.append(disk_subject(workdir))

        log(
            f"workspace: {args.actions} genrule actions in {len(bazel_workspace.layer_widths(args.actions))} "
            f"layers, outputs of 256 B to {args.largest_kib} KiB"
        )
        for s in subjects:
            s.bazel = BenchBazel(workdir, s.key, args.actions, args.largest_kib * 1024, extra_flags)
            try:
                s.bazel.warm_up()
            except NotMeasured as exc:
                s.error = str(exc)
        log(f"Bazel servers warm ({len(subjects)}); {args.rounds} rounds, servers interleaved")

        for r in range(1, args.rounds + 1):
            for s in subjects:
                if s.error:
                    continue
                try:
                    got = one_round(s, r, args.actions)
                except (NotMeasured, RuntimeError, subprocess.TimeoutExpired) as exc:
                    s.error = f"round {r}: {exc}"
                    log(f"  round {r} {s.label}: NOT MEASURED: {str(exc).splitlines()[0]}")
                    continue
                s.rounds.append(got)
                per_hit = got["warm"]["server_cpu_s"]
                log(
                    f"  round {r} {s.label}: cold {got['cold']['seconds']:.2f} s, warm {got['warm']['seconds']:.2f} s"
                    + (
                        f" ({per_hit * 1000 / args.actions:.2f} ms server CPU per hit)"
                        if per_hit is not None
                        else ""
                    )
                    + f", minimal {got['minimal']['seconds']:.2f} s"
                )
    finally:
        for s in subjects:
            if s.bazel is not None:
                s.bazel.shutdown()
        subprocess.run(["chmod", "-R", "u+w", str(workdir)], capture_output=True)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    unmeasured += [(s.label, s.error) for s in subjects if s.error]
    measured = [s for s in subjects if not s.error and s.rounds]
    log("")
    log(tables(measured, args.actions, args.rounds))
    found = checks(measured, args.actions)
    log("\ntargets (best of the rounds; met when one process count of ours meets it):")
    log(
        text_table.render(
            [["target", "verdict", "ours vs the other"]] + [[c.name, c.verdict, c.detail] for c in found]
        )
    )
    for label, why in unmeasured:
        banner = "!" * 78
        log(f"\n{banner}\n{label.upper()} WAS NOT MEASURED: {why[:3000]}\n{banner}")

    out = result_files.write(
        args.results,
        "bazel",
        started,
        load_before,
        {
            "actions": args.actions,
            "largest_output_bytes": args.largest_kib * 1024,
            "rounds": args.rounds,
            "bazel_flags": extra_flags,
            "servers": {s.label: {"rounds": s.rounds, "error": s.error} for s in subjects},
            "not_measured": dict(unmeasured),
            "targets": [c.__dict__ for c in found],
        },
    )
    log(f"results: {out} ({time.time() - started:.0f} s in all)")
    missed = [c for c in found if c.verdict == "FAIL"]
    return 1 if missed or unmeasured else 0


if __name__ == "__main__":
    sys.exit(main())
