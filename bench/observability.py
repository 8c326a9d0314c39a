"""What metrics and the request log cost, in bench/run.py's own figures, measured in pairs.

    .venv/bin/python bench/observability.py [--pairs 6] [--processes 1] [--workloads ...]

On this shared 2-core machine a figure moves by up to ±20 % between runs minutes apart, so two
servers measured one after the other (bench/run.py --observability on,off) cannot show a 5 %
difference. Here both run at once, each with its own data directory, tenant and PAT: ours with
observability on (a /metrics listener and a request-log line per call, as in production) and
off (no listener, errors logged only). Each pair runs bench/run.py's workloads (quick rounds)
against one and then the other, the order swapped every pair, and the table gives, per figure,
the median over the pairs of on's speed relative to off's (above 1: on was faster) with the
lowest and highest pair. FirstPass is left out: it needs a server that has served nothing.
The results also go to bench/results/observability-<time>.json.
"""

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(1, str(BENCH))

import result_files  # noqa: E402
import servers  # noqa: E402
import text_table  # noqa: E402
import workloads  # noqa: E402

# The bound: every figure with observability on within 5 % of off.
BOUND = 0.95


def log(line: str) -> None:
    print(line, flush=True)


def measure(
    workdir: Path,
    pairs: int,
    processes: int,
    only: list[str],
    samples: dict[str, dict[bool, list[float]]],
    higher: dict[str, bool],
    units: dict[str, str],
) -> None:
    """Both servers at once; `pairs` runs of the workloads against each, in swapped order."""
    on_data, off_data = servers.Ours(workdir, "ours-on"), servers.Ours(workdir, "ours-off")
    for ours in (on_data, off_data):
        ours.prepare()
    with (
        on_data.serve(processes, None, observed=True) as on,
        off_data.serve(processes, None, observed=False) as off,
    ):
        targets = {True: workloads.Target(on.address, on_data.metadata)}
        targets[False] = workloads.Target(off.address, off_data.metadata)
        for pair in range(pairs):
            for observed in (True, False) if pair % 2 == 0 else (False, True):
                log(f"pair {pair + 1}/{pairs}, observability {'on' if observed else 'off'}:")
                for result in workloads.run_all(targets[observed], True, log, only):
                    samples.setdefault(result.name, {True: [], False: []})[observed].append(result.value)
                    higher[result.name], units[result.name] = result.higher_is_better, result.unit


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=6, help="pairs of runs, order swapped each pair")
    parser.add_argument("--processes", type=int, default=1, help="our server's processes (default 1)")
    paired = [w for w in workloads.WORKLOADS if w != "FirstPass"]
    parser.add_argument("--workloads", default=",".join(paired), help=f"of {','.join(paired)}")
    args = parser.parse_args()
    only = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not only or set(only) - set(paired):
        parser.error(f"--workloads takes {', '.join(paired)}")

    workdir = servers.workdir()
    started, load_before = result_files.begin(workdir, log)
    samples: dict[str, dict[bool, list[float]]] = {}
    higher: dict[str, bool] = {}
    units: dict[str, str] = {}
    try:
        measure(workdir, args.pairs, args.processes, only, samples, higher, units)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = [
        [
            "figure",
            "unit",
            "on (median)",
            "off (median)",
            "on / off, median",
            "lowest, highest pair",
            "within 5 %",
        ]
    ]
    figures: dict[str, dict[str, Any]] = {}
    medians = []
    for name, by_mode in samples.items():
        # On's speed relative to off's, pair by pair: a latency's ratio inverted.
        ratios = [
            (a / b) if higher[name] else (b / a) for a, b in zip(by_mode[True], by_mode[False], strict=True)
        ]
        median = statistics.median(ratios)
        medians.append(median)
        figures[name] = {"on": by_mode[True], "off": by_mode[False], "ratios": ratios, "median": median}
        rows.append(
            [
                name,
                units[name],
                f"{statistics.median(by_mode[True]):,.1f}",
                f"{statistics.median(by_mode[False]):,.1f}",
                f"{median:.3f}",
                f"{min(ratios):.3f}, {max(ratios):.3f}",
                "yes" if median >= BOUND else "NO",
            ]
        )
    log("")
    log(text_table.render(rows))
    out = result_files.write(
        BENCH / "results",
        "observability",
        started,
        load_before,
        {"pairs": args.pairs, "processes": args.processes, "figures": figures},
    )
    log(f"results: {out.relative_to(BENCH.parent)} ({time.time() - started:.0f} s in all)")
    return 0 if all(m >= BOUND for m in medians) else 1


if __name__ == "__main__":
    sys.exit(main())
