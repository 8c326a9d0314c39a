"""Speed bench: our REAPI server with auth on, beside BuildGrid, on this machine.

    .venv/bin/python bench/run.py [--only ours,buildgrid,bare] [--processes 1,2] [--quick]
        [--cluster external|internal] [--mode independent|pass-through]
        [--ci-accepts all|confirmed|none] [--workloads GetActionResult,...] [--observability on,off]

Starts each server on a free loopback port in a throw-away directory, runs the workloads of
bench/workloads.py against it from client threads in this process, stops it, and prints one
table: our figures per process count, BuildGrid's, a bare grpcio server's (calibration), our
speed-up over BuildGrid, the target and pass/fail.
The results also go to bench/results/reapi-<time>.json. Exits 1 when BuildGrid could not be
measured or a target was missed by every process count measured.
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(1, str(BENCH))

import result_files  # noqa: E402
import servers  # noqa: E402
import text_table  # noqa: E402
import workloads  # noqa: E402

# The targets for this 2-core machine: (unit, bound, higher is better).
TARGETS: dict[str, tuple[float, bool]] = {
    "First pass / warm": (0.5, True),
    "ByteStream Write 64 MiB": (250, True),
    "ByteStream Read 64 MiB": (400, True),
    "BatchUpdateBlobs": (15_000, True),
    "BatchReadBlobs": (30_000, True),
    "FindMissingBlobs": (30, False),
    "GetActionResult": (3_000, True),
}


def target_of(name: str) -> tuple[float, bool] | None:
    for prefix, target in TARGETS.items():
        if name.startswith(prefix):
            return target
    return None


def log(line: str) -> None:
    print(line, flush=True)


def measure_ours(
    workdir: Path, processes: list[int], threads: int | None, quick: bool, args: argparse.Namespace
) -> dict[str, list[dict]]:
    columns: dict[str, list[dict]] = {}
    for n in processes:
        for observed in args.observability:
            # A data directory (database, storage, tenant) of its own for each server, so that
            # each one starts as fresh as the first: what FirstPass measures.
            name = f"ours {n}p" + ("" if observed else ", obs off")
            ours = servers.Ours(workdir, name.replace(" ", "-").replace(",", ""))
            log("ours: migrating a throw-away database, creating a tenant and a PAT …")
            ours.prepare(args.mode, args.ci_accepts)
            with ours.serve(n, threads, args.cluster, observed) as running:
                log(
                    f"{name}: {args.cluster} cluster serving on {running.address} (auth on; "
                    + (
                        "metrics and a request-log line per call"
                        if observed
                        else "no metrics, errors logged only"
                    )
                    + ")"
                )
                target = workloads.Target(running.address, ours.metadata)
                results = workloads.run_all(target, quick, log, args.workloads)
                columns[name] = [as_dict(r) for r in results]
    return columns


def measure_bare(workdir: Path, quick: bool, only: list[str]) -> list[dict]:
    with servers.bare(workdir) as running:
        log(f"bare grpcio (dicts, no auth, no storage): serving on {running.address}")
        results = workloads.run_all(workloads.Target(running.address), quick, log, only)
    return [as_dict(r) for r in results]


def measure_buildgrid(workdir: Path, quick: bool, only: list[str]) -> tuple[str, list[dict]]:
    version = servers.install_buildgrid(log)
    with servers.buildgrid(workdir) as running:
        log(f"BuildGrid {version}: serving on {running.address} (disk storage, no auth)")
        results = workloads.run_all(workloads.Target(running.address), quick, log, only)
    return version, [as_dict(r) for r in results]


def as_dict(r: workloads.Result) -> dict:
    return {
        "name": r.name,
        "unit": r.unit,
        "higher_is_better": r.higher_is_better,
        "value": r.value,
        "samples": r.samples,
        "detail": r.detail,
    }


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:,.2f}"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def passes(value: float, target: tuple[float, bool]) -> bool:
    bound, higher = target
    return value >= bound if higher else value <= bound


def table(
    columns: dict[str, list[dict]], buildgrid: list[dict] | None, bare: list[dict] | None
) -> tuple[str, list[str]]:
    """The report: our columns, BuildGrid's, the bare server's, our speed-up over BuildGrid
    (a latency ratio inverted, so above 1 is always faster), the target and pass/fail; and
    the workloads whose target none of our columns met."""
    first = next(iter(columns.values()), None) or buildgrid or bare or []
    ours_cols = list(columns)
    header = ["workload", "unit", *ours_cols, "BuildGrid", "bare grpcio"]
    header += [f"{c} vs BG" for c in ours_cols] + ["target"] + [f"{c} pass" for c in ours_cols]
    rows = [header]
    missed = []
    for i, row in enumerate(first):
        bg = buildgrid[i]["value"] if buildgrid else None
        ours_values = [columns[c][i]["value"] for c in ours_cols]
        higher = row["higher_is_better"]
        ratios = ["-" if bg is None else f"{(v / bg if higher else bg / v):.2f}x" for v in ours_values]
        target = target_of(row["name"])
        marks = ["pass" if target is None or passes(v, target) else "FAIL" for v in ours_values]
        if ours_values and "pass" not in marks:
            missed.append(row["name"])
        target_text = "-" if target is None else f"{'>=' if target[1] else '<='} {fmt(target[0])}"
        cells = [row["name"], row["unit"], *map(fmt, ours_values), fmt(bg)]
        cells += [fmt(bare[i]["value"] if bare else None), *ratios, target_text, *marks]
        rows.append(cells)
    return text_table.render(rows), missed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        default="ours,buildgrid,bare",
        help="servers to measure, of ours,buildgrid,bare (default: all three)",
    )
    parser.add_argument(
        "--processes", default="1,2", help="our server's process counts to measure (default 1,2)"
    )
    parser.add_argument(
        "--threads", type=int, help="our server's handler threads per process (default: its own)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument(
        "--cluster",
        choices=("external", "internal"),
        default="external",
        help="which cluster our server serves (default external; internal is CI's)",
    )
    parser.add_argument(
        "--mode",
        choices=("independent", "pass-through"),
        default="",
        help="the bench tenant's cache mode (default: the tenant default, independent)",
    )
    parser.add_argument(
        "--ci-accepts",
        choices=("all", "confirmed", "none"),
        default="",
        help="what the bench tenant's CI accepts from workstations (default: the tenant default, all)",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(workloads.WORKLOADS),
        help=f"which workloads to run, of {','.join(workloads.WORKLOADS)} (default: all)",
    )
    parser.add_argument(
        "--observability",
        default="on",
        help="our server with metrics and a request-log line per call (on, as in production), "
        "without (off: no listener, errors logged only), or both: on,off (default on)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the throw-away data directory")
    args = parser.parse_args()
    processes = [int(p) for p in args.processes.split(",") if p.strip()]
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if not only or only - {"ours", "buildgrid", "bare"}:
        parser.error(f"--only takes ours, buildgrid and bare, not {args.only!r}")
    observability = [o.strip() for o in args.observability.split(",") if o.strip()]
    if not observability or set(observability) - {"on", "off"}:
        parser.error(f"--observability takes on and off, not {args.observability!r}")
    args.observability = [o == "on" for o in observability]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workloads or set(args.workloads) - set(workloads.WORKLOADS):
        parser.error(f"--workloads takes {', '.join(workloads.WORKLOADS)}")

    workdir = servers.workdir()
    started, load_before = result_files.begin(workdir, log)
    columns: dict[str, list[dict]] = {}
    buildgrid: list[dict] | None = None
    bare: list[dict] | None = None
    bg_version = ""
    bg_error = ""
    try:
        if "ours" in only:
            columns = measure_ours(workdir, processes, args.threads, args.quick, args)
        if "buildgrid" in only:
            try:
                bg_version, buildgrid = measure_buildgrid(workdir, args.quick, args.workloads)
            except servers.BuildGridUnavailable as exc:
                bg_error = str(exc)
        if "bare" in only:
            bare = measure_bare(workdir, args.quick, args.workloads)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    text, missed = table(columns, buildgrid, bare)
    log("")
    log(text)
    if columns:
        log(
            "\nevery target met by at least one process count"
            if not missed
            else f"\ntargets missed by every process count: {'; '.join(missed)}"
        )
    if bg_version:
        log(
            f"\nBuildGrid {bg_version} from PyPI; ours with auth on (PAT in x-aspect); "
            "client on this machine."
        )
    if bg_error:
        banner = "!" * 78
        log(f"\n{banner}\nBUILDGRID WAS NOT MEASURED: {bg_error}\n{banner}")

    out = result_files.write(
        BENCH / "results",
        "reapi",
        started,
        load_before,
        {
            "quick": args.quick,
            "cluster": args.cluster,
            "mode": args.mode or "independent",
            "ci_accepts": args.ci_accepts or "all",
            "ours": columns,
            "buildgrid": {"version": bg_version, "results": buildgrid, "error": bg_error},
            "bare_grpcio": bare,
            "targets_missed_by_every_process_count": missed,
        },
    )
    log(f"results: {out.relative_to(BENCH.parent)} ({time.time() - started:.0f} s in all)")
    return 0 if not missed and not bg_error else 1


if __name__ == "__main__":
    sys.exit(main())
