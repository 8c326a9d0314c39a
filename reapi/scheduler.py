"""Execute, before any worker: check the action, route it to a pool, answer from the action
cache, or record an operation and send its task to the pool's queue (docs/architecture.md, the execution path).
"""

import dataclasses
import logging

from django.conf import settings

from reapi import clusters, digests, messages, operations, provenance
from reapi.auth import Principal
from reapi.cas import Cas
from reapi.digests import Digest
from reapi.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from workers import pools
from workers.models import Operation

log = logging.getLogger(__name__)


def load_action(cas: Cas, tenant: str, action: Digest) -> tuple[re_pb2.Action, re_pb2.Command, Digest]:
    """The Action and its Command; FAILED_PRECONDITION listing every missing one (REAPI)."""
    try:
        action_msg = messages.parse(re_pb2.Action, cas.get(tenant, action), f"action {action}")
    except NotFound:
        raise FailedPrecondition(
            f"the action {action} is not in the CAS: upload it first", missing=((action.hash, action.size),)
        ) from None
    # Checked like the request's own digest before either becomes a storage key.
    command_digest = digests.check_field(action_msg.command_digest, f"action {action} command_digest")
    input_root = (
        digests.check_field(action_msg.input_root_digest, f"action {action} input_root_digest")
        if action_msg.HasField("input_root_digest")
        else digests.of(b"")
    )
    missing = []
    command = None
    try:
        command = messages.parse(re_pb2.Command, cas.get(tenant, command_digest), f"command {command_digest}")
    except NotFound:
        missing.append(("command", command_digest))
    if not cas.contains(tenant, input_root):
        missing.append(("input root", input_root))
    if missing or command is None:
        listed = ", ".join(f"{what} {d}" for what, d in missing)
        raise FailedPrecondition(
            f"missing from the CAS: {listed}", missing=tuple((d.hash, d.size) for _, d in missing)
        )
    if not command.arguments:
        raise InvalidArgument(f"command {command_digest} has no arguments")
    return action_msg, command, input_root


def platform_of(action: re_pb2.Action, command: re_pb2.Command) -> list[tuple[str, str]]:
    # REAPI v2.2 moved the platform to the Action; Bazel 4 still sends it in the Command.
    chosen = action.platform if action.platform.properties else command.platform
    return [(p.name, p.value) for p in chosen.properties]


def timeout_of(action: re_pb2.Action) -> float:
    if not action.HasField("timeout"):
        return float(settings.REAPI_DEFAULT_ACTION_TIMEOUT)
    seconds = action.timeout.ToTimedelta().total_seconds()
    # REAPI Action.timeout: one longer than the server's maximum MUST be refused.
    if seconds > settings.REAPI_MAX_ACTION_TIMEOUT:
        raise InvalidArgument(
            f"action timeout {seconds:g}s exceeds this server's maximum of "
            f"{settings.REAPI_MAX_ACTION_TIMEOUT}s (REAPI_MAX_ACTION_TIMEOUT)"
        )
    if seconds <= 0:
        raise InvalidArgument(f"action timeout {seconds:g}s must be positive")
    return seconds


def submit(
    cluster: str,
    who: Principal,
    action: Digest,
    skip_cache_lookup: bool,
    writer: provenance.Writer | None = None,
) -> Operation:
    backend = clusters.for_call(cluster, who.cache_mode)
    action_msg, command, _root = load_action(backend.cas, who.tenant, action)
    pool = pools.route(cluster, platform_of(action_msg, command))
    timeout_of(action_msg)
    if not skip_cache_lookup and not action_msg.do_not_cache:
        try:
            result = backend.action_cache.get(who.tenant, action, threshold=who.ci_threshold(cluster))
        except NotFound:
            pass
        else:
            return operations.record_cached(who.tenant_id, cluster, backend.alias, pool.name, action, result)
    # REAPI do_not_cache: in-flight requests for such an action may not be merged.
    op, created = operations.create_or_join(
        who.tenant_id,
        cluster,
        backend.alias,
        pool.name,
        action,
        dedupe=not action_msg.do_not_cache,
        requested_by=dataclasses.asdict(writer) if writer else {},
    )
    if created:
        enqueue(op)
    return op


def enqueue(op: Operation) -> None:
    from workers.tasks import execute_operation

    try:
        execute_operation.apply_async((op.pk,), queue=pools.queue_name(op.cluster, op.pool))
    except Exception as exc:
        log.exception("sending operation %s to its queue failed", op.name)
        err = Unavailable(f"the execution queue is unreachable ({type(exc).__name__}); retry")
        operations.fail(op.pk, err)
        raise err from None
