"""Remote-execution overhead: Execute to COMPLETED for a trivial action, and the throughput of
many trivial actions on two workers, on Redis, on this machine; with and without the sandbox.

    .venv/bin/python bench/execution.py [--broker redis|filesystem|amqp] [--database-url URL]
                                        [--runs 200] [--actions 200] [--clients 32] [--keep]
                                        [--sandbox both|on|off]

Starts, in a throw-away directory: a migrated database (SQLite there, or a fresh database on the
PostgreSQL server given), one `reapi serve --cluster external`, two `manage.py worker --pool
x86-64` processes and a Redis broker database (127.0.0.1:6379/12, emptied first). The action
is `sh -c 'echo ok > out'` with one output file, made distinct by its salt so every Execute
runs it (no cache hit). Its blobs are uploaded before the clock starts.

- Overhead: Execute calls one after another; for each, the wall time from the call to the
  COMPLETED update, minus the command's own time (execution_start to execution_completed in
  the result's metadata). p50 and p95 in ms. Targets: p50 <= 100 ms, p95 <= 300 ms.
- Throughput: `--actions` Execute calls from `--clients` threads at once; actions/s over the
  wall time from the first call to the last COMPLETED. Target: >= 20 actions/s.
- The sandbox's cost (`--sandbox both`, the default: the whole rig once with REAPI_SANDBOX=off,
  once with it on): the p50 and p95 of Execute to COMPLETED with it minus without it, and the
  throughput with it as a share of the throughput without. Targets: p50 added <= 15 ms,
  throughput >= 80 %.

Prints a table and writes it as JSON to bench/results/execution-<time>.json. Exits 1 if a
target is missed (the overhead and throughput targets are those of the sandboxed run).
"""

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import redis  # noqa: E402
from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2  # noqa: E402
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc  # noqa: E402
from tests.support.reapi_client import digest  # noqa: E402
from tests.support.servers import free_port  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/12"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
TARGETS = {
    "overhead p50": (100.0, False),
    "overhead p95": (300.0, False),
    "throughput": (20.0, True),
    "sandbox added p50": (15.0, False),
    "sandbox throughput": (80.0, True),
}
UNITS = {
    "overhead p50": "ms",
    "overhead p95": "ms",
    "throughput": "actions/s",
    "sandbox added p50": "ms",
    "sandbox throughput": "%",
}


def log(line: str) -> None:
    print(line, flush=True)


class Rig:
    """The database, server and workers under test, in a throw-away directory."""

    def __init__(
        self, workdir: Path, broker: str, database_url: str | None, concurrency: int, sandbox: bool
    ) -> None:
        self.workdir = workdir
        self.concurrency = concurrency
        self.env = {**os.environ, "DATA_DIR": str(workdir), "DJANGO_SETTINGS_MODULE": "portal.settings"}
        self.env["REAPI_SANDBOX"] = "on" if sandbox else "off"
        for name in (
            "REAPI_STORAGE_INTERNAL",
            "REAPI_STORAGE_EXTERNAL",
            "REAPI_TLS_CERT",
            "REAPI_POOLS_EXTERNAL",
        ):
            self.env.pop(name, None)
        self.env["DATABASE_URL"] = self._database(database_url)
        if broker == "redis":
            redis.Redis.from_url(REDIS_URL).flushdb()
            self.env["CELERY_BROKER_URL"] = REDIS_URL
        elif broker == "amqp":
            self.env["CELERY_BROKER_URL"] = AMQP_URL
        else:
            self.env.pop("CELERY_BROKER_URL", None)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.drop_database: tuple[str, str] | None = None
        self.address = f"127.0.0.1:{free_port()}"
        self.pat = ""

    def _database(self, server_url: str | None) -> str:
        if not server_url:
            return f"sqlite:///{self.workdir / 'bench.sqlite3'}"
        import psycopg

        parts = urlsplit(server_url)
        name = f"execbench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.drop_database = (urlunsplit(parts._replace(path="/postgres")), name)
        return urlunsplit(parts._replace(path=f"/{name}"))

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), *args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        self.manage("migrate", "--no-input", "-v0")
        self.manage("tenant", "create", "bench")
        self.manage("tenant", "add-member", "bench", "bencher", "--role", "admin")
        self.pat = (
            self.manage("token", "issue", "--tenant", "bench", "--user", "bencher").strip().splitlines()[-1]
        )
        server = self.spawn("server", "reapi", "serve", "--cluster", "external", "--listen", self.address)
        self._wait_serving(server)
        for i in range(2):
            name = f"worker{i}"
            self.spawn(
                name,
                "worker",
                "--cluster",
                "external",
                "--pool",
                "x86-64",
                "--concurrency",
                str(self.concurrency),
            )
            self._wait_log(name, " ready.")

    def _wait_serving(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError((self.workdir / "server.log").read_text()[-4000:])
            try:
                with grpc.insecure_channel(self.address) as ch:
                    re_grpc.CapabilitiesStub(ch).GetCapabilities(
                        re_pb2.GetCapabilitiesRequest(), metadata=self.metadata, timeout=1
                    )
                return
            except grpc.RpcError:
                time.sleep(0.2)
        raise RuntimeError("the server did not answer within 60 s")

    def _wait_log(self, name: str, text: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if text in (self.workdir / f"{name}.log").read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} not ready:\n{(self.workdir / f'{name}.log').read_text()[-4000:]}")

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-aspect", self.pat),)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.drop_database:
            import psycopg

            admin, name = self.drop_database
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def trivial_action(salt: bytes) -> tuple[re_pb2.Digest, list[bytes]]:
    command = re_pb2.Command(
        arguments=["/bin/sh", "-c", "echo ok > out"],
        environment_variables=[re_pb2.Command.EnvironmentVariable(name="PATH", value="/usr/bin:/bin")],
        output_files=["out"],
    ).SerializeToString(deterministic=True)
    action = re_pb2.Action(
        command_digest=digest(command), input_root_digest=digest(b""), salt=salt
    ).SerializeToString(deterministic=True)
    return digest(action), [command, action]


def upload(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], blobs: list[bytes]) -> None:
    cas = re_grpc.ContentAddressableStorageStub(channel)
    for i in range(0, len(blobs), 200):
        batch = blobs[i : i + 200]
        reply = cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(
                requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b) for b in batch]
            ),
            metadata=metadata,
        )
        assert all(r.status.code == 0 for r in reply.responses), reply


def prepare(rig: Rig, channel: grpc.Channel, count: int, tag: str) -> list[re_pb2.Digest]:
    actions, blobs = [], []
    for i in range(count):
        d, b = trivial_action(f"{tag}-{i}-{uuid.uuid4()}".encode())
        actions.append(d)
        blobs += b
    upload(channel, rig.metadata, list({digest(b).hash: b for b in blobs}.values()))
    return actions


def execute(
    channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], action: re_pb2.Digest
) -> tuple[float, re_pb2.ExecuteResponse]:
    """Seconds from the Execute call to the COMPLETED update, and the response."""
    began = time.perf_counter()
    last = None
    for op in re_grpc.ExecutionStub(channel).Execute(
        re_pb2.ExecuteRequest(action_digest=action), metadata=metadata, timeout=120
    ):
        last = op
    elapsed = time.perf_counter() - began
    assert last is not None and last.done, last
    reply = re_pb2.ExecuteResponse()
    last.response.Unpack(reply)
    assert reply.status.code == 0 and reply.result.exit_code == 0 and not reply.cached_result, reply
    return elapsed, reply


def seconds(a: Timestamp, b: Timestamp) -> float:
    return (b.ToNanoseconds() - a.ToNanoseconds()) / 1e9


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def measure_overhead(rig: Rig, runs: int) -> dict:
    with grpc.insecure_channel(rig.address) as channel:
        warm = prepare(rig, channel, 10, "warm")
        for action in warm:
            execute(channel, rig.metadata, action)
        actions = prepare(rig, channel, runs, "lat")
        overheads: list[float] = []
        totals: list[float] = []
        command_ms: list[float] = []
        phases: dict[str, list[float]] = {"queue": [], "inputs": [], "upload": [], "report": []}
        for action in actions:
            elapsed, reply = execute(channel, rig.metadata, action)
            meta = reply.result.execution_metadata
            command = seconds(meta.execution_start_timestamp, meta.execution_completed_timestamp)
            overheads.append((elapsed - command) * 1000)
            totals.append(elapsed * 1000)
            command_ms.append(command * 1000)
            phases["queue"].append(seconds(meta.queued_timestamp, meta.worker_start_timestamp) * 1000)
            phases["inputs"].append(
                seconds(meta.worker_start_timestamp, meta.execution_start_timestamp) * 1000
            )
            phases["upload"].append(
                seconds(meta.execution_completed_timestamp, meta.worker_completed_timestamp) * 1000
            )
            phases["report"].append(
                (elapsed * 1000) - seconds(meta.queued_timestamp, meta.worker_completed_timestamp) * 1000
            )
    return {
        "runs": runs,
        "p50_ms": percentile(overheads, 50),
        "p95_ms": percentile(overheads, 95),
        "mean_ms": statistics.fmean(overheads),
        "max_ms": max(overheads),
        "command_p50_ms": percentile(command_ms, 50),
        "total_p50_ms": percentile(totals, 50),
        "total_p95_ms": percentile(totals, 95),
        "phase_p50_ms": {k: percentile(v, 50) for k, v in phases.items()},
        "samples_ms": overheads,
    }


def measure_throughput(rig: Rig, count: int, clients: int) -> dict:
    channels = [grpc.insecure_channel(rig.address) for _ in range(max(1, clients // 8))]
    try:
        actions = prepare(rig, channels[0], count, "tput")
        lock = threading.Lock()
        done: list[float] = []

        def one(i: int) -> None:
            elapsed, _reply = execute(channels[i % len(channels)], rig.metadata, actions[i])
            with lock:
                done.append(elapsed)

        began = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(count)))
        wall = time.perf_counter() - began
    finally:
        for ch in channels:
            ch.close()
    return {
        "actions": count,
        "clients": clients,
        "wall_s": wall,
        "actions_per_s": count / wall,
        "latency_p50_ms": percentile(done, 50) * 1000,
        "latency_p95_ms": percentile(done, 95) * 1000,
    }


def bench_once(args: argparse.Namespace, sandbox: bool) -> tuple[dict, dict]:
    workdir = Path(tempfile.mkdtemp(prefix="reapi-exec-bench-"))
    workdir.chmod(0o711)  # the sandbox's uid passes through to each action's directory
    rig = Rig(workdir, args.broker, args.database_url, args.concurrency, sandbox)
    database = "PostgreSQL" if args.database_url else "SQLite"
    mode = "sandboxed" if sandbox else "UNSANDBOXED"
    log(f"{mode}: {args.broker} broker, {database}, 2 workers x {args.concurrency}, in {workdir}")
    try:
        rig.start()
        log(f"server on {rig.address}, workers ready; measuring overhead over {args.runs} runs …")
        overhead = measure_overhead(rig, args.runs)
        log(f"throughput: {args.actions} actions from {args.clients} clients …")
        throughput = measure_throughput(rig, args.actions, args.clients)
    finally:
        rig.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    phases = overhead["phase_p50_ms"]
    log(
        f"  Execute to COMPLETED p50 {overhead['total_p50_ms']:.1f} ms, p95 {overhead['total_p95_ms']:.1f} ms; "
        f"overhead p50 {overhead['p50_ms']:.1f} ms (per phase: queue to worker {phases['queue']:.1f}, "
        f"inputs {phases['inputs']:.1f}, command {overhead['command_p50_ms']:.1f}, outputs+cache "
        f"{phases['upload']:.1f}, back to the client {phases['report']:.1f}); "
        f"throughput {throughput['actions_per_s']:.1f} actions/s"
    )
    return overhead, throughput


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", choices=("redis", "filesystem", "amqp"), default="redis")
    parser.add_argument("--database-url", help="a PostgreSQL server URL; a fresh database is created there")
    parser.add_argument("--runs", type=int, default=200, help="sequential Executes for the overhead")
    parser.add_argument("--actions", type=int, default=200, help="actions for the throughput")
    parser.add_argument("--clients", type=int, default=32, help="client threads for the throughput")
    parser.add_argument("--concurrency", type=int, default=2, help="actions each worker runs at once")
    parser.add_argument("--sandbox", choices=("both", "on", "off"), default="both")
    parser.add_argument("--keep", action="store_true", help="keep the throw-away directories (logs)")
    args = parser.parse_args()

    modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.sandbox]
    runs = {sandbox: bench_once(args, sandbox) for sandbox in modes}
    overhead, throughput = runs[modes[-1]]
    figures = {
        "overhead p50": overhead["p50_ms"],
        "overhead p95": overhead["p95_ms"],
        "throughput": throughput["actions_per_s"],
    }
    if len(runs) == 2:
        (bare, bare_tput), (boxed, boxed_tput) = runs[False], runs[True]
        figures["sandbox added p50"] = boxed["total_p50_ms"] - bare["total_p50_ms"]
        figures["sandbox throughput"] = 100 * boxed_tput["actions_per_s"] / bare_tput["actions_per_s"]
        log(f"sandbox added p95: {boxed['total_p95_ms'] - bare['total_p95_ms']:.1f} ms")
    failed = []
    log("")
    log(f"{'measure':<20}{'value':>19}  {'target':<18}result")
    for name, value in figures.items():
        bound, higher = TARGETS[name]
        ok = value >= bound if higher else value <= bound
        failed += [] if ok else [name]
        unit = UNITS[name]
        target = f"{'>=' if higher else '<='} {bound:g} {unit}"
        log(f"{name:<20}{value:>9.1f} {unit:<9}  {target:<18}{'pass' if ok else 'FAIL'}")
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    out = results / f"execution-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "broker": args.broker,
                "database": "PostgreSQL" if args.database_url else "SQLite",
                "runs": {
                    ("sandboxed" if sandbox else "unsandboxed"): {"overhead": o, "throughput": t}
                    for sandbox, (o, t) in runs.items()
                },
                "figures": figures,
                "failed": failed,
            },
            indent=2,
        )
    )
    log(f"results: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
