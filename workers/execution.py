"""What a worker does with one operation: claim it, run its action, complete it once.

The order REAPI and our invariants need (docs/architecture.md): outputs, stdout and stderr into the CAS, then the action
cache entry (unless `do_not_cache` or a non-zero exit: REAPI says a failed action MUST NOT be
cached), then the operation marked done. Running an action again is harmless (same inputs,
fresh directory, content-addressed outputs), which is what makes `acks_late` redelivery safe.
"""

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from google.protobuf.timestamp_pb2 import Timestamp

from reapi import ac_entries, clusters, conflicts, error_status, faults, metrics, operations, provenance
from reapi.digests import Digest
from reapi.errors import FailedPrecondition, Internal, InvalidArgument, ReapiError, Unauthenticated
from reapi.protos import re_pb2
from reapi.scheduler import load_action, platform_of, timeout_of
from workers import inputs, outputs, pools, process, sandbox
from workers.models import Operation
from workers.monitor import Identity, Monitor, force_rmtree
from workers.paths import check_relative, resolve

log = logging.getLogger(__name__)


def run_operation(op_id: int, monitor: Monitor) -> None:
    me = monitor.identity
    op = operations.claim(op_id, me.name)
    if op is None:
        log.info("operation %s: done already or running elsewhere; nothing to do", op_id)
        return
    if op.attempt > settings.REAPI_MAX_DELIVERIES:
        operations.fail(
            op.pk,
            Internal(f"delivered {op.attempt} times; not trying again (REAPI_MAX_DELIVERIES)"),
            op.attempt,
        )
        return
    if op.cancel_requested:
        operations.complete(op.pk, operations.cancelled_response(), op.attempt)
        return
    if (op.cluster, op.pool) != (me.cluster, me.pool):
        # A task in the wrong queue must not run on the wrong architecture.
        operations.fail(
            op.pk, Internal(f"delivered to {me.name}, not a {op.cluster}/{op.pool} worker"), op.attempt
        )
        return
    if op.started_at is not None:
        metrics.execution(op.cluster, op.pool, "queued", (op.started_at - op.queued_at).total_seconds())
    started = time.monotonic()
    with monitor.track(op.pk) as cancelled:
        response = execute(op, me, cancelled)
    if operations.complete(op.pk, response, op.attempt):
        metrics.execution(op.cluster, op.pool, "running", time.monotonic() - started)
        log.info(
            "operation %s done: exit %s, status %s",
            op.name,
            response.result.exit_code if response.HasField("result") else "-",
            response.status.code,
        )
    else:
        log.warning("operation %s was finished elsewhere meanwhile; result dropped", op.name)


def _stamp(ts: Timestamp) -> None:
    ts.FromDatetime(datetime.fromtimestamp(time.time(), UTC))


def execute(op: Operation, me: Identity, cancelled: threading.Event) -> re_pb2.ExecuteResponse:
    """Run the operation's action in a fresh directory, removed afterwards."""
    meta = re_pb2.ExecutedActionMetadata(worker=me.name)
    meta.queued_timestamp.FromDatetime(op.queued_at)
    _stamp(meta.worker_start_timestamp)
    # Which pool and cluster ran it, for the client and the tests (REAPI auxiliary_metadata).
    meta.auxiliary_metadata.add().Pack(
        re_pb2.Platform(
            properties=[
                re_pb2.Platform.Property(name="cluster", value=me.cluster),
                re_pb2.Platform.Property(name="pool", value=me.pool),
            ]
        )
    )
    base = Path(me.exec_dir) / f"{op.name}.{op.attempt}"
    try:
        base.mkdir(parents=True)
        return _execute_in(op, me, base, meta, cancelled)
    except ReapiError as err:
        return re_pb2.ExecuteResponse(status=error_status.of(err), message=err.message)
    except Exception as exc:
        # The details stay in the worker's log under a request id: a client learns no path or
        # exception text, and a storage fault gets its code (UNAVAILABLE, RESOURCE_EXHAUSTED).
        failure = faults.as_error(exc, f"operation {op.name} on worker {me.name}")
        return re_pb2.ExecuteResponse(status=error_status.of(failure), message=failure.message)
    finally:
        force_rmtree(str(base))


@dataclass(frozen=True)
class Job:
    """An operation's action, loaded and checked, and where it runs."""

    op: Operation
    backend: clusters.Backend
    action_digest: Digest
    action: re_pb2.Action
    command: re_pb2.Command
    input_root: Digest
    timeout: float
    box: sandbox.Sandbox
    pool: pools.Pool
    network: bool
    base: Path
    root: Path
    workdir: str

    @property
    def tenant(self) -> str:
        return self.op.tenant.slug


def _execute_in(
    op: Operation, me: Identity, base: Path, meta: re_pb2.ExecutedActionMetadata, cancelled: threading.Event
) -> re_pb2.ExecuteResponse:
    job = _load(op, me, base)
    _stamp(meta.input_fetch_start_timestamp)
    input_bytes = _stage_inputs(job)
    _stamp(meta.input_fetch_completed_timestamp)
    _stamp(meta.execution_start_timestamp)
    outcome, limit_message = _run(job, me, input_bytes, cancelled)
    _stamp(meta.execution_completed_timestamp)
    if outcome.how == process.CANCELLED:
        return operations.cancelled_response()
    _stamp(meta.output_upload_start_timestamp)
    result = _upload(job, outcome)
    _stamp(meta.output_upload_completed_timestamp)
    _stamp(meta.worker_completed_timestamp)
    result.execution_metadata.CopyFrom(meta)
    return _answer(job, outcome, result, limit_message)


def _load(op: Operation, me: Identity, base: Path) -> Job:
    """The action and its command from the CAS, checked, and the pool's leave to run it."""
    backend = clusters.backend(op.storage_alias)
    action_digest = Digest(op.action_hash, op.action_size)
    action, command, input_root = load_action(backend.cas, op.tenant.slug, action_digest)
    timeout = timeout_of(action)
    box = sandbox.current(Path(me.exec_dir))
    pool = pools.get(me.cluster, me.pool)
    network = pools.asks_for_network(platform_of(action, command))
    if network and not pool.network:
        raise FailedPrecondition(f"network=on, but pool {pool.name} does not allow network access")
    workdir = (
        check_relative(command.working_directory, "working directory") if command.working_directory else "."
    )
    return Job(
        op,
        backend,
        action_digest,
        action,
        command,
        input_root,
        timeout,
        box,
        pool,
        network,
        base,
        base / "root",
        workdir,
    )


def _stage_inputs(job: Job) -> int:
    """The input root materialised and the outputs' parent folders made; the input bytes."""
    sandbox.prepare_base(job.base)
    input_bytes = inputs.materialise(job.backend.cas, job.tenant, job.input_root, job.root, job.box.owner)
    if not resolve(job.root, job.workdir, (), "working directory").is_dir():
        raise InvalidArgument(
            f"working directory {job.command.working_directory!r} is not a directory of the input root"
        )
    outputs.prepare(job.root, job.workdir, job.command, job.box.owner)
    return input_bytes


def _run(job: Job, me: Identity, input_bytes: int, cancelled: threading.Event) -> tuple[process.Outcome, str]:
    """The command in the sandbox, with exactly its environment: (outcome, the limit that ended it or '')."""
    env = {v.name: v.value for v in job.command.environment_variables}
    return sandbox.run(
        job.box,
        f"{sandbox.group_prefix(me.pid)}{job.op.name}.{job.op.attempt}",
        job.pool.action_limits(),
        job.network,
        job.base,
        job.workdir,
        list(job.command.arguments),
        env,
        job.timeout,
        cancelled,
        input_bytes,
    )


def _upload(job: Job, outcome: process.Outcome) -> re_pb2.ActionResult:
    """Outputs (only of a command that ended by itself), stdout and stderr, into the CAS."""
    uploader = outputs.Uploader(job.backend.cas, job.tenant)
    result = re_pb2.ActionResult(exit_code=outcome.exit_code)
    if outcome.how == process.OK:
        aliases = (sandbox.SANDBOX_ROOT, str(job.root)) if job.box.enabled else (str(job.root),)
        outputs.collect(uploader, job.root, job.workdir, job.command, result, aliases)
    for path, field in (
        (job.base / "stdout", result.stdout_digest),
        (job.base / "stderr", result.stderr_digest),
    ):
        if os.path.getsize(path):
            field.CopyFrom(outputs.to_proto(uploader.add_file(path)))
    uploader.flush()  # CAS first, then the action cache (_answer): an entry never precedes its blobs
    return result


def _answer(
    job: Job, outcome: process.Outcome, result: re_pb2.ActionResult, limit_message: str
) -> re_pb2.ExecuteResponse:
    if outcome.how == process.TIMED_OUT:
        # REAPI: a timed-out action reports DEADLINE_EXCEEDED and MAY carry a partial result.
        message = "; ".join(
            filter(None, [f"the action timed out after {job.timeout:g}s and was killed", limit_message])
        )
        return re_pb2.ExecuteResponse(
            result=result, status=error_status.status("DEADLINE_EXCEEDED", message), message=message
        )
    if limit_message:
        # The command ran and a limit ended it: an ordinary failed action (a non-zero exit,
        # never cached), with the reason where Bazel shows it.
        return re_pb2.ExecuteResponse(
            result=result, status=error_status.status("OK", ""), message=limit_message
        )
    if outcome.exit_code == 0 and not job.action.do_not_cache:
        refused = _cache(job, result)
        if refused is not None:
            return re_pb2.ExecuteResponse(
                result=result, status=error_status.status("OK", ""), message=f"not cached: {refused}"
            )
    return re_pb2.ExecuteResponse(result=result, status=error_status.status("OK", ""))


def _cache(job: Job, result: re_pb2.ActionResult) -> str | None:
    """Write the action cache, recorded as written by the requester's token; the reason the
    action cache refused the result, for the client, or None."""
    op, backend, tenant = job.op, job.backend, job.tenant
    record = None
    author = ac_entries.Author(op.cluster == "external")
    on_conflict = None
    if op.requested_by:
        writer = provenance.Writer(**op.requested_by)
        record = lambda: provenance.record(backend.alias, tenant, job.action_digest, writer)  # noqa: E731
        author = writer.author
        on_conflict = conflicts.recorder(
            op.tenant_id, job.action_digest, writer.username, writer.token_prefix
        )
    try:
        backend.action_cache.put(
            tenant, job.action_digest, result, record=record, author=author, on_conflict=on_conflict
        )
    except Unauthenticated as exc:
        # The requester's token was revoked while the action ran: its result is returned
        # to the client but not cached, so a purge of that token has nothing to miss.
        log.info("operation %s: result not cached: %s", op.name, exc.message)
    except InvalidArgument as exc:
        # A result the action cache refuses (an output tree holding an absolute symlink,
        # more entries than it takes) is still the action's result; it is not cached.
        log.info("operation %s: result not cached: %s", op.name, exc.message)
        return exc.message
    return None
