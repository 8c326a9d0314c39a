"""The life of an Operation row: create or join, claim under a lease, complete exactly once.

Every transition is one conditional UPDATE, so two servers, two deliveries of one task or a
worker that comes back from the dead can race without an operation ending twice: the first
`complete` wins and the others change nothing.
"""

import re
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from reapi import error_status, operation_watch
from reapi.digests import Digest
from reapi.errors import NotFound, ReapiError, Unavailable
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.google.longrunning import operations_pb2
from workers.models import COMPLETED, EXECUTING, QUEUED, Operation

NAME_RE = re.compile(r"(?:.*/)?operations/([0-9a-f]{32})|([0-9a-f]{32})")


def public_name(op: Operation, instance: str = "") -> str:
    # REAPI reserves the `operations` segment for operation names under an instance.
    return f"{instance}/operations/{op.name}" if instance else f"operations/{op.name}"


def find(tenant_id: int, cluster: str, name: str) -> Operation:
    """The caller's operation by the name Execute gave; another tenant's is NOT_FOUND too."""
    m = NAME_RE.fullmatch(name)
    op = None
    if m:
        op = Operation.objects.filter(
            name=m.group(1) or m.group(2), tenant_id=tenant_id, cluster=cluster
        ).first()
    if op is None:
        raise NotFound(f"no operation {name[:120]!r}")
    return op


def create_or_join(
    tenant_id: int,
    cluster: str,
    storage_alias: str,
    pool: str,
    action: Digest,
    dedupe: bool,
    requested_by: dict[str, Any] | None = None,
) -> tuple[Operation, bool]:
    """A new queued operation, or the tenant's identical one already queued or running.

    `requested_by` is the provenance of the request (reapi.provenance.Writer as a dict): the
    action-cache entry the worker writes is recorded as that credential's, so purging a
    token removes what its remote executions cached too. A joined operation keeps its first
    requester.
    """
    key = f"{cluster}/{action.hash}/{action.size}" if dedupe else None
    for _ in range(5):
        if key is not None:
            existing = Operation.objects.filter(tenant_id=tenant_id, inflight_key=key).first()
            if existing is not None:
                return existing, False
        try:
            with transaction.atomic():
                op = _create(
                    tenant_id,
                    cluster,
                    storage_alias,
                    pool,
                    action,
                    inflight_key=key,
                    requested_by=requested_by or {},
                )
            return op, True
        except IntegrityError:
            continue  # an identical Execute won the race: join it
    raise Unavailable("could not record the operation under contention; retry")


def record_cached(
    tenant_id: int, cluster: str, storage_alias: str, pool: str, action: Digest, result: re_pb2.ActionResult
) -> Operation:
    response = re_pb2.ExecuteResponse(result=result, cached_result=True, status=error_status.status("OK", ""))
    now = timezone.now()
    return _create(
        tenant_id,
        cluster,
        storage_alias,
        pool,
        action,
        stage=COMPLETED,
        done=True,
        cached=True,
        exit_code=result.exit_code,
        response=response.SerializeToString(),
        started_at=now,
        completed_at=now,
    )


def _create(
    tenant_id: int, cluster: str, storage_alias: str, pool: str, action: Digest, **fields: Any
) -> Operation:
    return Operation.objects.create(
        name=uuid.uuid4().hex,
        tenant_id=tenant_id,
        cluster=cluster,
        storage_alias=storage_alias,
        pool=pool,
        action_hash=action.hash,
        action_size=action.size,
        **fields,
    )


def claim(op_id: int, worker: str) -> Operation | None:
    """Take a queued operation, or one whose worker's lease lapsed; None if there is nothing
    to do (done already, or running under a live lease elsewhere)."""
    now = timezone.now()
    claimed = (
        Operation.objects.filter(pk=op_id, done=False)
        .filter(Q(stage=QUEUED) | Q(lease_until__lt=now))
        .update(
            stage=EXECUTING,
            attempt=F("attempt") + 1,
            worker=worker,
            lease_until=now + timedelta(seconds=settings.REAPI_WORKER_LEASE_SECONDS),
            started_at=now,
            version=F("version") + 1,
        )
    )
    if not claimed:
        return None
    operation_watch.notify(op_id)
    return Operation.objects.select_related("tenant").get(pk=op_id)


def renew(op_ids: list[int], worker: str) -> None:
    until = timezone.now() + timedelta(seconds=settings.REAPI_WORKER_LEASE_SECONDS)
    Operation.objects.filter(pk__in=op_ids, worker=worker, done=False).update(lease_until=until)


def complete(
    op_id: int, response: re_pb2.ExecuteResponse, attempt: int | None = None, only_queued: bool = False
) -> bool:
    """Finish the operation with `response` unless it is finished already (or, given
    `attempt`, was taken over by a later delivery). True if this call finished it."""
    rows = Operation.objects.filter(pk=op_id, done=False)
    if attempt is not None:
        rows = rows.filter(attempt=attempt)
    if only_queued:
        rows = rows.filter(stage=QUEUED)
    has_result = response.HasField("result")
    done = rows.update(
        done=True,
        stage=COMPLETED,
        inflight_key=None,
        lease_until=None,
        completed_at=timezone.now(),
        response=response.SerializeToString(),
        status_code=response.status.code,
        exit_code=response.result.exit_code if has_result else None,
        message=(response.status.message or response.message)[:2000],
        version=F("version") + 1,
    )
    if done:
        operation_watch.notify(op_id)
    return bool(done)


def fail(op_id: int, err: ReapiError, attempt: int | None = None) -> bool:
    return complete(op_id, re_pb2.ExecuteResponse(status=error_status.of(err)), attempt)


def request_cancel(op: Operation) -> None:
    """Flag the operation; a queued one ends now, a running one when its worker sees the flag."""
    Operation.objects.filter(pk=op.pk, done=False).update(cancel_requested=True)
    complete(op.pk, cancelled_response(), only_queued=True)


def cancelled_response() -> re_pb2.ExecuteResponse:
    return re_pb2.ExecuteResponse(
        status=error_status.status("CANCELLED", "the operation was cancelled (CancelOperation)")
    )


def release(op: Operation) -> bool:
    """Put a lapsed operation back in its queue (the caller sends the task again)."""
    return bool(
        Operation.objects.filter(
            pk=op.pk, attempt=op.attempt, done=False, stage=EXECUTING, lease_until__lt=timezone.now()
        ).update(stage=QUEUED, lease_until=None, worker="", version=F("version") + 1)
    )


def lapsed(limit: int = 100) -> list[Operation]:
    return list(Operation.objects.filter(done=False, stage=EXECUTING, lease_until__lt=timezone.now())[:limit])


def to_proto(op: Operation, instance: str = "") -> operations_pb2.Operation:
    meta = re_pb2.ExecuteOperationMetadata(
        stage=op.stage,  # type: ignore[arg-type]
        action_digest=re_pb2.Digest(hash=op.action_hash, size_bytes=op.action_size),
        digest_function=re_pb2.DigestFunction.SHA256,
    )
    message = operations_pb2.Operation(name=public_name(op, instance), done=op.done)
    message.metadata.Pack(meta)
    if op.done:
        response = re_pb2.ExecuteResponse()
        response.ParseFromString(bytes(op.response or b""))
        message.response.Pack(response)
    return message
