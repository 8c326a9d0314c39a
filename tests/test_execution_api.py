"""Remote execution over real sockets on the embedded (filesystem) broker: a real server, a
real `manage.py worker`, actions uploaded to the real CAS, Execute streams read as Bazel would."""

import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reapi import db_threads
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.google.longrunning import operations_pb2
from reapi.gen.google.rpc import status_pb2
from tests.support.execution_fixtures import (
    COMPLETED,
    EXEC_ENV,
    EXECUTING,
    QUEUED,
    ActionSpec,
    Exe,
    Link,
    WorkerProcess,
    aux_pool,
    database_connections,
    execute,
    execute_stream,
    execution,
    in_thread,
    missing_details,
    ops,
    pid_alive,
    pids_running,
    response,
    run,
    stage,
    wait_for,
)
from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer, free_port, manage
from tests.support.tenants import Persona
from workers.models import Operation

CANCELLED, DEADLINE_EXCEEDED, INTERNAL = 1, 4, 13


# Where the module's server and worker answer scrapes (metrics of execution).
SERVER_METRICS = f"127.0.0.1:{free_port()}"
WORKER_METRICS = f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def server() -> Iterator[ReapiServer]:
    with ReapiServer("external", env={**EXEC_ENV, "REAPI_METRICS_LISTEN": SERVER_METRICS}) as s:
        yield s


@pytest.fixture(scope="module")
def worker(server: ReapiServer) -> Iterator[WorkerProcess]:
    args = ("--metrics-listen", WORKER_METRICS)
    with WorkerProcess("external", "x86-64", EXEC_ENV, concurrency=3, args=args) as w:
        yield w


@pytest.fixture
def client(server: ReapiServer, acme: Persona) -> Iterator[Client]:
    with server.channel() as channel:
        yield Client(channel, acme.pat())


TOOL = b"""#!/bin/sh
set -e
test -x ./tool.sh
test -d empty
test -d out/dir
cat link > out/copied.txt
echo "$GREETING from $(basename "$PWD")" > out/greeting.txt
mkdir out/dir/sub
printf 'run' > out/dir/sub/leaf.txt
printf '#!/bin/sh\\n' > out/dir/tool
chmod +x out/dir/tool
ln -s sub/leaf.txt out/dir/link
echo to-stdout
echo to-stderr >&2
sleep 0.4
"""


def test_it_runs_an_action_in_its_input_tree_and_streams_its_stages(
    client: Client, worker: WorkerProcess
) -> None:
    spec = ActionSpec(
        ["./tool.sh"],
        inputs={
            "src": {
                "tool.sh": Exe(TOOL),
                "data": {"deep": {"c.txt": b"nested input\n"}},
                "link": Link("data/deep/c.txt"),
                "empty": {},
            }
        },
        env={"PATH": "/usr/bin:/bin", "GREETING": "hi"},
        # Outputs are named relative to the working directory (REAPI).
        working_directory="src",
        output_files=["out/copied.txt", "out/greeting.txt"],
        output_directories=["out/dir"],
    )
    action = spec.upload(client)
    updates = execute(client, action)
    stages = [stage(u) for u in updates]
    assert stages[0] == QUEUED and stages[-1] == COMPLETED, stages
    assert EXECUTING in stages, stages
    assert all(u.name == updates[0].name for u in updates)
    reply = response(updates[-1])
    assert reply.status.code == 0, reply.status
    result = reply.result
    assert result.exit_code == 0, client.read(result.stderr_digest)
    files = {f.path: f for f in result.output_files}
    assert client.read(files["out/copied.txt"].digest) == b"nested input\n"
    assert client.read(files["out/greeting.txt"].digest) == b"hi from src\n"
    assert client.read(result.stdout_digest) == b"to-stdout\n"
    assert client.read(result.stderr_digest) == b"to-stderr\n"

    [out_dir] = result.output_directories
    assert out_dir.path == "out/dir"
    tree = re_pb2.Tree.FromString(client.read(out_dir.tree_digest))
    assert {f.name: f.is_executable for f in tree.root.files} == {"tool": True}
    assert [(s.name, s.target) for s in tree.root.symlinks] == [("link", "sub/leaf.txt")]
    [sub] = tree.children
    assert tree.root.directories[0].digest == digest(sub.SerializeToString(deterministic=True))
    assert client.read(sub.files[0].digest) == b"run"

    meta = result.execution_metadata
    assert meta.worker == worker.name
    assert aux_pool(result) == "x86-64"
    stamps = [
        meta.queued_timestamp,
        meta.worker_start_timestamp,
        meta.input_fetch_start_timestamp,
        meta.execution_start_timestamp,
        meta.execution_completed_timestamp,
        meta.output_upload_completed_timestamp,
        meta.worker_completed_timestamp,
    ]
    assert [s.ToNanoseconds() for s in stamps] == sorted(s.ToNanoseconds() for s in stamps)
    # Outputs were in the CAS before the action cache entry, which now serves the result.
    assert client.get_action_result(action) == result
    # Each action runs in a fresh directory that is gone afterwards.
    exec_root = Path(os.environ["DATA_DIR"]) / "exec"
    assert not any(p.name.startswith(updates[0].name.rsplit("/", 1)[-1]) for p in exec_root.rglob("*"))


def test_a_second_execute_is_an_action_cache_hit(client: Client, worker: WorkerProcess) -> None:
    spec = ActionSpec(["/bin/sh", "-c", "echo cached > o"], output_files=["o"], salt=b"hit")
    action = spec.upload(client)
    first = response(execute(client, action)[-1])
    second = execute(client, action)
    assert len(second) == 1 and second[0].done
    assert response(second[0]).cached_result
    assert response(second[0]).result == first.result
    third = response(execute(client, action, skip_cache_lookup=True)[-1])
    assert not third.cached_result and third.result.exit_code == 0


def test_it_caches_neither_a_failure_nor_a_do_not_cache_action(client: Client, worker: WorkerProcess) -> None:
    failing = ActionSpec(["/bin/sh", "-c", "echo oops >&2; exit 3"])
    action = failing.upload(client)
    reply = response(execute(client, action)[-1])
    assert reply.status.code == 0
    assert reply.result.exit_code == 3
    assert client.read(reply.result.stderr_digest) == b"oops\n"
    with pytest.raises(grpc.RpcError) as err:
        client.get_action_result(action)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    uncached = ActionSpec(["/bin/true"], do_not_cache=True)
    action = uncached.upload(client)
    assert response(execute(client, action)[-1]).result.exit_code == 0
    with pytest.raises(grpc.RpcError) as err:
        client.get_action_result(action)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_missing_program_is_exit_127(client: Client, worker: WorkerProcess) -> None:
    reply = run(client, ActionSpec(["no-such-program-here"]))
    assert reply.result.exit_code == 127
    assert b"no-such-program-here" in client.read(reply.result.stderr_digest)


def test_missing_action_or_command_is_failed_precondition_listing_them(client: Client) -> None:
    spec = ActionSpec(["/bin/true"], salt=b"missing")
    action, blobs = spec.build()
    with pytest.raises(grpc.RpcError) as err:
        execute(client, action)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert missing_details(err.value) == [f"blobs/{action.hash}/{action.size_bytes}"]

    # The Action is there, its Command and input root are not.
    action_blob = blobs[-1]
    client.upload(action_blob)
    parsed = re_pb2.Action.FromString(action_blob)
    with pytest.raises(grpc.RpcError) as err:
        execute(client, action)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "command" in (err.value.details() or "")
    subjects = missing_details(err.value)
    assert f"blobs/{parsed.command_digest.hash}/{parsed.command_digest.size_bytes}" in subjects


@pytest.mark.parametrize("field", ["command_digest", "input_root_digest"])
def test_an_action_holding_a_path_for_a_digest_is_refused_naming_the_field(
    client: Client, field: str
) -> None:
    action = re_pb2.Action(command_digest=digest(b"a command"), input_root_digest=digest(b""))
    getattr(action, field).CopyFrom(re_pb2.Digest(hash="../../../etc/passwd", size_bytes=1))
    data = action.SerializeToString()
    client.upload(data)
    with pytest.raises(grpc.RpcError) as err:
        execute(client, digest(data))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field}: digest hash '../../../etc/passwd'" in (err.value.details() or "")
    assert not Operation.objects.filter(action_hash=digest(data).hash).exists()


def test_a_missing_input_file_fails_the_operation_with_its_digest(
    client: Client, worker: WorkerProcess
) -> None:
    spec = ActionSpec(["/bin/cat", "in.txt"], inputs={"in.txt": b"never uploaded " + os.urandom(8)})
    action, blobs = spec.build()
    lost = blobs[0]
    client.upload(*blobs[1:])
    reply = response(execute(client, action)[-1])
    assert reply.status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "missing" in reply.status.message
    detail = status_pb2.PreconditionFailure()
    assert reply.status.details[0].Unpack(detail)
    assert [v.subject for v in detail.violations] == [f"blobs/{digest(lost).hash}/{len(lost)}"]


@pytest.mark.parametrize(
    ("platform", "named"),
    [
        ({"Pool": "gpu"}, "Pool=gpu"),
        ({"Arch": "mips64"}, "Arch=mips64"),
        ({"OSFamily": "Windows"}, "OSFamily=Windows"),
    ],
)
def test_a_platform_no_pool_serves_is_refused_naming_it(
    client: Client, platform: dict[str, str], named: str
) -> None:
    action = ActionSpec(["/bin/true"], platform=platform).upload(client)
    with pytest.raises(grpc.RpcError) as err:
        execute(client, action)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert named in (err.value.details() or "")
    assert not Operation.objects.filter(action_hash=action.hash).exists()


def test_identical_actions_in_flight_join_one_operation(client: Client, worker: WorkerProcess) -> None:
    # Each run writes a fresh random value: one output for all three proves one run.
    script = "sleep 1; cat /proc/sys/kernel/random/uuid > o"
    action = ActionSpec(["/bin/sh", "-c", script], output_files=["o"]).upload(client)
    joins = [in_thread(execute, client, action) for _ in range(3)]
    results = [join() for join in joins]
    names = {updates[-1].name for updates in results}
    assert len(names) == 1, names
    assert all(response(updates[-1]).result.exit_code == 0 for updates in results)
    outputs = {response(updates[-1]).result.output_files[0].digest.hash for updates in results}
    assert len(outputs) == 1


def test_wait_execution_follows_the_same_operation_to_its_end(client: Client, worker: WorkerProcess) -> None:
    action = ActionSpec(["/bin/sh", "-c", "sleep 1; echo waited > o"], output_files=["o"]).upload(client)
    stream = execute_stream(client, action)
    first = next(stream)
    stream.cancel()  # the client goes away ...
    assert not first.done
    # ... and comes back with WaitExecution.
    updates = list(
        execution(client).WaitExecution(
            re_pb2.WaitExecutionRequest(name=first.name), metadata=client.metadata, timeout=30
        )
    )
    assert {u.name for u in updates} == {first.name}
    result = response(updates[-1]).result
    assert client.read(result.output_files[0].digest) == b"waited\n"


def test_operations_are_listed_got_and_waited_for_within_the_tenant_only(
    server: ReapiServer, client: Client, globex: Persona, worker: WorkerProcess
) -> None:
    action = ActionSpec(["/bin/sh", "-c", "sleep 0.5"], salt=b"ops").upload(client)
    first = next(execute_stream(client, action))
    stub = ops(client)
    waited = stub.WaitOperation(
        operations_pb2.WaitOperationRequest(name=first.name), metadata=client.metadata, timeout=30
    )
    assert waited.done and response(waited).result.exit_code == 0
    got = stub.GetOperation(operations_pb2.GetOperationRequest(name=first.name), metadata=client.metadata)
    assert got == waited
    listed = stub.ListOperations(operations_pb2.ListOperationsRequest(page_size=5), metadata=client.metadata)
    assert first.name in [o.name for o in listed.operations]

    with server.channel() as channel:
        outsider = Client(channel, globex.pat())
        for call, request in [
            (ops(outsider).GetOperation, operations_pb2.GetOperationRequest(name=first.name)),
            (ops(outsider).CancelOperation, operations_pb2.CancelOperationRequest(name=first.name)),
            (ops(outsider).WaitOperation, operations_pb2.WaitOperationRequest(name=first.name)),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                call(request, metadata=outsider.metadata, timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            list(
                execution(outsider).WaitExecution(
                    re_pb2.WaitExecutionRequest(name=first.name), metadata=outsider.metadata
                )
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        listed = ops(outsider).ListOperations(
            operations_pb2.ListOperationsRequest(), metadata=outsider.metadata
        )
        assert first.name not in [o.name for o in listed.operations]


def test_cancel_kills_the_running_command(client: Client, worker: WorkerProcess) -> None:
    marker = f"300.{uuid.uuid4().int % 10**9}"  # a sleep length no other process has
    action = ActionSpec(["/bin/sh", "-c", f"sleep {marker} & wait; : {marker}"]).upload(client)
    stream = execute_stream(client, action)
    first = next(stream)
    # The sleep has started: the action's processes, as the host sees them.
    wait_for(lambda: any(c.startswith("sleep ") for c in pids_running(marker).values()))
    running = pids_running(marker)
    ops(client).CancelOperation(
        operations_pb2.CancelOperationRequest(name=first.name), metadata=client.metadata
    )
    last = list(stream)[-1]
    assert response(last).status.code == CANCELLED
    wait_for(lambda: not any(pid_alive(p) for p in running), timeout=5)


def test_cancel_ends_a_queued_operation_at_once(client: Client) -> None:
    # No arm64 worker runs in this module: the action waits in its queue.
    action = ActionSpec(["/bin/true"], platform={"Arch": "arm64"}).upload(client)
    stream = execute_stream(client, action)
    first = next(stream)
    assert stage(first) == QUEUED
    time.sleep(0.5)
    assert Operation.objects.get(name=first.name.rsplit("/", 1)[-1]).stage == QUEUED
    ops(client).CancelOperation(
        operations_pb2.CancelOperationRequest(name=first.name), metadata=client.metadata
    )
    assert response(list(stream)[-1]).status.code == CANCELLED


def test_more_waiting_executes_than_threads_leave_the_cache_served(
    server: ReapiServer, client: Client
) -> None:
    # Bazel keeps an Execute stream open per remote action (--jobs of them). No arm64 worker
    # runs in this module, so these all wait in their queue: more of them than the server's 32
    # handler threads, and each waiting without a database connection of its own.
    assert server.proc is not None
    actions = [
        ActionSpec(["/bin/echo", f"waiting {i}"], platform={"Arch": "arm64"}).upload(client)
        for i in range(48)
    ]
    before = database_connections(server.proc.pid)
    streams = [execute_stream(client, action, timeout=120) for action in actions]
    firsts = [next(stream) for stream in streams]
    assert [stage(first) for first in firsts] == [QUEUED] * len(actions)

    # Cache calls are still answered: they do not queue behind the waiting streams.
    blob = os.urandom(100)
    assert client.missing(digest(blob)) == [digest(blob)]
    client.upload(blob)
    assert client.batch_read(digest(blob)).responses[0].data == blob
    # At most the lent database threads' and the watcher's, never one per stream.
    assert database_connections(server.proc.pid) <= before + db_threads.THREADS + 1

    for first in firsts:
        ops(client).CancelOperation(
            operations_pb2.CancelOperationRequest(name=first.name), metadata=client.metadata
        )
    assert [response(list(stream)[-1]).status.code for stream in streams] == [CANCELLED] * len(actions)


def test_a_timed_out_action_is_deadline_exceeded(client: Client, worker: WorkerProcess) -> None:
    spec = ActionSpec(["/bin/sh", "-c", "echo started; sleep 60"], timeout=1)
    action = spec.upload(client)
    # The call's own deadline is shorter than the command's sleep: only a kill at the action's
    # timeout gets the answer back in time.
    reply = response(execute(client, action, timeout=30)[-1])
    assert reply.status.code == DEADLINE_EXCEEDED, reply.status
    assert "timed out" in reply.status.message
    assert client.read(reply.result.stdout_digest) == b"started\n"
    with pytest.raises(grpc.RpcError) as err:
        client.get_action_result(action)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_timeout_beyond_the_maximum_is_refused(client: Client) -> None:
    action = ActionSpec(["/bin/true"], timeout=10_000).upload(client)
    with pytest.raises(grpc.RpcError) as err:
        execute(client, action)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "maximum" in (err.value.details() or "")


def test_execute_needs_the_execute_scope(server: ReapiServer, acme: Persona) -> None:
    with server.channel() as channel:
        cache_only = Client(channel, acme.pat(scopes="cas:read,cas:write,ac:read,ac:write"))
        action = ActionSpec(["/bin/true"]).upload(cache_only)
        with pytest.raises(grpc.RpcError) as err:
            execute(cache_only, action)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        caps = cache_only.get_capabilities()
        assert caps.execution_capabilities.exec_enabled is False
        assert Client(channel, acme.pat()).get_capabilities().execution_capabilities.exec_enabled is True


def test_an_action_whose_worker_dies_is_not_delivered_forever(client: Client, worker: WorkerProcess) -> None:
    # Two arm64 workers allowed one delivery each: the first dies running the action (the
    # sandbox keeps an action from killing its worker, so the test does it, as a crash of the
    # machine would), and the action fails instead of going round again: a poison action
    # cannot loop.
    env = {**EXEC_ENV, "REAPI_MAX_DELIVERIES": "1"}
    action = ActionSpec(["/bin/sh", "-c", "sleep 30"], platform={"Arch": "arm64"}).upload(client)
    with (
        WorkerProcess("external", "arm64", env, 1) as first,
        WorkerProcess("external", "arm64", env, 1) as second,
    ):
        join = in_thread(execute, client, action)
        op = wait_for(
            lambda: (
                Operation.objects.filter(action_hash=action.hash, stage=EXECUTING).exclude(worker="").first()
            )
        )
        victim = first if op.worker == first.name else second
        victim.kill()
        reply = response(join()[-1])
        assert reply.status.code == INTERNAL, reply.status
        assert "not trying again" in reply.status.message
        assert [w.proc.poll() is None for w in (first, second) if w.proc].count(True) == 1


def test_a_worker_for_an_unconfigured_pool_refuses_to_start() -> None:
    done = manage("worker", "--cluster", "external", "--pool", "sparc", env=EXEC_ENV, check=False)
    assert done.returncode != 0
    assert "no pool 'sparc' on the external cluster (configured: x86-64, arm64)" in done.stderr


def test_a_purge_of_the_requesting_token_removes_what_its_executions_cached(
    server: ReapiServer, worker: WorkerProcess, acme: Persona
) -> None:
    from portal import tokens
    from reapi import provenance

    leaked = tokens.issue(acme.tenant, acme.developer or "", name="leaked")
    careful = acme.pat(acme.admin)
    with server.channel() as channel:
        by_leaked = Client(channel, leaked.secret)
        by_careful = Client(channel, careful)
        mine = ActionSpec(["/bin/sh", "-c", "echo leaked > o"], output_files=["o"], salt=b"purge-1")
        theirs = ActionSpec(["/bin/sh", "-c", "echo careful > o"], output_files=["o"], salt=b"purge-2")
        leaked_action, careful_action = mine.upload(by_leaked), theirs.upload(by_careful)
        assert response(execute(by_leaked, leaked_action)[-1]).result.exit_code == 0
        assert response(execute(by_careful, careful_action)[-1]).result.exit_code == 0
        assert by_careful.get_action_result(leaked_action).exit_code == 0

        tokens.revoke(leaked.token)
        assert provenance.purge_token(leaked.token.pk, settle_seconds=0) == 1
        with pytest.raises(grpc.RpcError) as info:
            by_careful.get_action_result(leaked_action)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert by_careful.get_action_result(careful_action).exit_code == 0


def scraped(listen: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_worker_times_the_actions_it_runs_and_the_server_counts_its_workers(
    client: Client, worker: WorkerProcess
) -> None:
    def count(stage: str) -> float:
        labels = (("cluster", "external"), ("pool", "x86-64"), ("stage", stage))
        return scraped(WORKER_METRICS).get(("reapi_execution_duration_seconds_count", labels), 0.0)

    before = count("running"), count("queued")
    result = run(client, ActionSpec(["/bin/sh", "-c", "echo timed"], salt=uuid.uuid4().bytes))
    assert result.status.code == 0 and result.result.exit_code == 0
    # Observed once the worker has completed the operation, which the client may see first.
    assert wait_for(lambda: count("running") == before[0] + 1)
    assert count("queued") == before[1] + 1
    online = scraped(SERVER_METRICS)[("reapi_workers_online", (("cluster", "external"), ("pool", "x86-64")))]
    assert online >= 1
