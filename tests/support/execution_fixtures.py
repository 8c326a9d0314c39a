"""Remote execution in tests: real `manage.py worker` processes, actions built and uploaded
through the real CAS, and Execute streams read over real sockets."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import grpc
import redis
from google.protobuf import duration_pb2

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from reapi.gen.google.longrunning import operations_pb2
from reapi.gen.google.longrunning import operations_pb2_grpc as ops_grpc
from reapi.gen.google.rpc import status_pb2
from tests.support.polling import wait_for  # noqa: F401  (the execution tests import it from here)
from tests.support.reapi_client import Client, digest
from tests.support.servers import ROOT, stop_process

QUEUED, EXECUTING, COMPLETED = 2, 3, 4

# Settings every execution test shares: two pools on the external cluster, short leases so a
# killed worker's action comes back within seconds.
EXEC_ENV = {
    "REAPI_POOLS_EXTERNAL": "x86-64,arm64",
    "REAPI_POOLS_INTERNAL": "x86-64",
    "REAPI_WORKER_LEASE_SECONDS": "3",
    "REAPI_MAX_ACTION_TIMEOUT": "120",
}
# TEST_REDIS_DB: another database, for two suites run side by side on one Redis.
TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "11"))


def redis_env() -> dict[str, str]:
    """A dedicated Redis database for the execution tests, emptied first."""
    url = f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    return {"CELERY_BROKER_URL": url}


class WorkerProcess:
    """`manage.py worker --cluster C --pool P` in a child process, stopped afterwards."""

    def __init__(
        self, cluster: str, pool: str, env: dict[str, str], concurrency: int = 2, args: tuple[str, ...] = ()
    ) -> None:
        self.args = args  # more options of `manage.py worker`
        self.cluster = cluster
        self.pool = pool
        self.env = {**os.environ, **env}
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(os.environ["DATA_DIR"]) / f"worker-{cluster}-{pool}-{time.monotonic_ns()}.log"

    @property
    def name(self) -> str:
        assert self.proc is not None
        return f"{self.cluster}.{self.pool}.{self.proc.pid}@{socket.gethostname()}"

    def __enter__(self) -> "WorkerProcess":
        self.start()
        return self

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "manage.py"),
                    "worker",
                    "--cluster",
                    self.cluster,
                    "--pool",
                    self.pool,
                    "--concurrency",
                    str(self.concurrency),
                    *self.args,
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        # Celery logs "ready." once it consumes from the queue.
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()}")
            if " ready." in self.log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log.read_text()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exe:
    """An executable input file."""

    data: bytes


@dataclass(frozen=True)
class Link:
    target: str


Tree = dict[str, "bytes | Exe | Link | Tree"]


def directory(tree: Tree, blobs: list[bytes]) -> re_pb2.Digest:
    """Upload-ready Directory messages for a nested dict; returns the root's digest."""
    d = re_pb2.Directory()
    for name in sorted(tree):
        node = tree[name]
        if isinstance(node, dict):
            d.directories.add(name=name, digest=directory(node, blobs))
        elif isinstance(node, Link):
            d.symlinks.add(name=name, target=node.target)
        else:
            data = node.data if isinstance(node, Exe) else node
            blobs.append(data)
            d.files.add(name=name, digest=digest(data), is_executable=isinstance(node, Exe))
    data = d.SerializeToString(deterministic=True)
    blobs.append(data)
    return digest(data)


@dataclass
class ActionSpec:
    argv: list[str]
    inputs: Tree = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=lambda: {"PATH": "/usr/bin:/bin"})
    output_files: list[str] = field(default_factory=list)
    output_directories: list[str] = field(default_factory=list)
    working_directory: str = ""
    platform: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    do_not_cache: bool = False
    salt: bytes = b""

    def build(self) -> tuple[re_pb2.Digest, list[bytes]]:
        blobs: list[bytes] = []
        root = directory(self.inputs, blobs)
        command = re_pb2.Command(
            arguments=self.argv,
            environment_variables=[
                re_pb2.Command.EnvironmentVariable(name=k, value=v) for k, v in sorted(self.env.items())
            ],
            output_files=sorted(self.output_files),
            output_directories=sorted(self.output_directories),
            working_directory=self.working_directory,
            platform=re_pb2.Platform(
                properties=[
                    re_pb2.Platform.Property(name=k, value=v) for k, v in sorted(self.platform.items())
                ]
            ),
        )
        command_blob = command.SerializeToString(deterministic=True)
        blobs.append(command_blob)
        action = re_pb2.Action(
            command_digest=digest(command_blob),
            input_root_digest=root,
            do_not_cache=self.do_not_cache,
            salt=self.salt,
        )
        if self.timeout is not None:
            action.timeout.CopyFrom(duration_pb2.Duration(seconds=int(self.timeout)))
        action_blob = action.SerializeToString(deterministic=True)
        blobs.append(action_blob)
        return digest(action_blob), blobs

    def upload(self, client: Client) -> re_pb2.Digest:
        action, blobs = self.build()
        unique = list({digest(b).hash: b for b in blobs}.values())
        reply = client.upload(*unique)
        assert all(r.status.code == 0 for r in reply.responses), reply
        return action


# --- calls --------------------------------------------------------------------------------------


def execution(client: Client) -> re_grpc.ExecutionStub:
    return re_grpc.ExecutionStub(client.channel)


def ops(client: Client) -> ops_grpc.OperationsStub:
    return ops_grpc.OperationsStub(client.channel)


def execute_stream(
    client: Client, action: re_pb2.Digest, skip_cache_lookup: bool = False, timeout: float = 60
):  # type: ignore[no-untyped-def]
    return execution(client).Execute(
        re_pb2.ExecuteRequest(
            instance_name=client.instance, action_digest=action, skip_cache_lookup=skip_cache_lookup
        ),
        metadata=client.metadata,
        timeout=timeout,
    )


def execute(
    client: Client, action: re_pb2.Digest, skip_cache_lookup: bool = False, timeout: float = 60
) -> list[operations_pb2.Operation]:
    return list(execute_stream(client, action, skip_cache_lookup, timeout))


def stage(op: operations_pb2.Operation) -> int:
    meta = re_pb2.ExecuteOperationMetadata()
    assert op.metadata.Unpack(meta)
    return int(meta.stage)


def response(op: operations_pb2.Operation) -> re_pb2.ExecuteResponse:
    assert op.done, op
    out = re_pb2.ExecuteResponse()
    assert op.response.Unpack(out)
    return out


def run(client: Client, spec: ActionSpec, timeout: float = 60) -> re_pb2.ExecuteResponse:
    updates = execute(client, spec.upload(client), timeout=timeout)
    return response(updates[-1])


def aux_pool(result: re_pb2.ActionResult) -> str:
    for any_msg in result.execution_metadata.auxiliary_metadata:
        platform = re_pb2.Platform()
        if any_msg.Unpack(platform):
            return {p.name: p.value for p in platform.properties}["pool"]
    raise AssertionError("no pool in the execution metadata")


def missing_details(err: grpc.RpcError) -> list[str]:
    """Subjects of the PreconditionFailure MISSING violations in a gRPC error's status."""
    trailers: Any = err.trailing_metadata() or ()  # type: ignore[attr-defined]
    raw = next((value for key, value in trailers if key == "grpc-status-details-bin"), None)
    assert raw, "no status details"
    status = status_pb2.Status.FromString(raw)
    subjects = []
    for detail in status.details:
        failure = status_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            subjects += [v.subject for v in failure.violations if v.type == "MISSING"]
    return subjects


def in_thread(fn, *args):  # type: ignore[no-untyped-def]
    """Run fn(*args) in a thread; the returned function joins it and returns its result."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # handed to the joiner
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()

    def join(timeout: float = 60):  # type: ignore[no-untyped-def]
        t.join(timeout)
        assert not t.is_alive(), "thread still running"
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box.get("value")

    return join


def pids_running(marker: str) -> dict[int, str]:
    """The live processes whose command line holds `marker`, host pid -> command line: how a test
    sees into a sandboxed action, which can write nothing outside its own directory."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and pid_alive(int(entry.name)):
            found[int(entry.name)] = cmdline
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes: it runs nothing.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def database_connections(pid: int) -> int:
    """How many connections process `pid` holds to the tests' database (DATABASE_URL).

    SQLite (in WAL mode): handles on the `-wal` file, one per open connection. Not the database
    file's own: SQLite defers closing those while other connections of the process hold locks
    on it, and reuses them. PostgreSQL: established TCP connections to its port."""
    url = os.environ["DATABASE_URL"]
    links = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            continue  # closed while we looked
    if url.startswith("sqlite:///"):
        return links.count(url.removeprefix("sqlite:///") + "-wal")
    port = urlsplit(url).port or 5432
    sockets = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port, state, inode = int(fields[2].rsplit(":", 1)[1], 16), fields[3], fields[9]
            count += remote_port == port and state == "01" and inode in sockets  # 01: ESTABLISHED
    return count
