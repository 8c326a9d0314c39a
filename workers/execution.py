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


def _execute_in(
    op: Operation, me: Identity, base: Path, meta: re_pb2.ExecutedActionMetadata, cancelled: threading.Event
) -> re_pb2.ExecuteResponse:
    backend = clusters.backend(op.storage_alias)
    tenant = op.tenant.slug
    action_digest = Digest(op.action_hash, op.action_size)
    action, command, input_root = load_action(backend.cas, tenant, action_digest)
    timeout = timeout_of(action)
    box = sandbox.current(Path(me.exec_dir))
    pool = pools.get(me.cluster, me.pool)
    network = pools.asks_for_network(platform_of(action, command))
    if network and not pool.network:
        raise FailedPrecondition(f"network=on, but pool {pool.name} does not allow network access")
    root = base / "root"
    workdir = (
        check_relative(command.working_directory, "working directory") if command.working_directory else "."
    )

    _stamp(meta.input_fetch_start_timestamp)
    sandbox.prepare_base(base)
    input_bytes = inputs.materialise(backend.cas, tenant, input_root, root, box.owner)
    if not resolve(root, workdir, (), "working directory").is_dir():
        raise InvalidArgument(
            f"working directory {command.working_directory!r} is not a directory of the input root"
        )
    outputs.prepare(root, workdir, command, box.owner)
    _stamp(meta.input_fetch_completed_timestamp)

    env = {v.name: v.value for v in command.environment_variables}
    _stamp(meta.execution_start_timestamp)
    outcome, limit_message = sandbox.run(
        box,
        f"{sandbox.group_prefix(me.pid)}{op.name}.{op.attempt}",
        pool.action_limits(),
        network,
        base,
        workdir,
        list(command.arguments),
        env,
        timeout,
        cancelled,
        input_bytes,
    )
    _stamp(meta.execution_completed_timestamp)
    if outcome.how == process.CANCELLED:
        return operations.cancelled_response()

    _stamp(meta.output_upload_start_timestamp)
    uploader = outputs.Uploader(backend.cas, tenant)
    result = re_pb2.ActionResult(exit_code=outcome.exit_code)
    timed_out = outcome.how == process.TIMED_OUT
    if outcome.how == process.OK:
        aliases = (sandbox.SANDBOX_ROOT, str(root)) if box.enabled else (str(root),)
        outputs.collect(uploader, root, workdir, command, result, aliases)
    for path, field in ((base / "stdout", result.stdout_digest), (base / "stderr", result.stderr_digest)):
        if os.path.getsize(path):
            field.CopyFrom(outputs.to_proto(uploader.add_file(path)))
    uploader.flush()  # CAS first ...
    _stamp(meta.output_upload_completed_timestamp)
    _stamp(meta.worker_completed_timestamp)
    result.execution_metadata.CopyFrom(meta)

    if timed_out:
        # REAPI: a timed-out action reports DEADLINE_EXCEEDED and MAY carry a partial result.
        message = "; ".join(
            filter(None, [f"the action timed out after {timeout:g}s and was killed", limit_message])
        )
        return re_pb2.ExecuteResponse(
            result=result,
            status=error_status.status("DEADLINE_EXCEEDED", message),
            message=message,
        )
    if limit_message:
        # The command ran and a limit ended it: an ordinary failed action (a non-zero exit,
        # never cached), with the reason where Bazel shows it.
        return re_pb2.ExecuteResponse(
            result=result, status=error_status.status("OK", ""), message=limit_message
        )
    if outcome.exit_code == 0 and not action.do_not_cache:
        # ... then the action cache, recorded as written by the requester's token.
        record = None
        author = ac_entries.Author(op.cluster == "external")
        on_conflict = None
        if op.requested_by:
            writer = provenance.Writer(**op.requested_by)
            record = lambda: provenance.record(backend.alias, tenant, action_digest, writer)  # noqa: E731
            author = writer.author
            on_conflict = conflicts.recorder(
                op.tenant_id, action_digest, writer.username, writer.token_prefix
            )
        try:
            backend.action_cache.put(
                tenant, action_digest, result, record=record, author=author, on_conflict=on_conflict
            )
        except Unauthenticated as exc:
            # The requester's token was revoked while the action ran: its result is returned
            # to the client but not cached, so a purge of that token has nothing to miss.
            log.info("operation %s: result not cached: %s", op.name, exc.message)
        except InvalidArgument as exc:
            # A result the action cache refuses (an output tree holding an absolute symlink,
            # more entries than it takes) is still the action's result; it is not cached.
            log.info("operation %s: result not cached: %s", op.name, exc.message)
            return re_pb2.ExecuteResponse(
                result=result, status=error_status.status("OK", ""), message=f"not cached: {exc.message}"
            )
    return re_pb2.ExecuteResponse(result=result, status=error_status.status("OK", ""))
