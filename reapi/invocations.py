"""Invocations: every call of one build (Bazel's `tool_invocation_id`, REAPI RequestMetadata)
grouped per tenant, with its credential, cluster, tool, first and last call, hits, misses,
remote executions, bytes up and down, and the digests it missed.

Recorded as the usage counters are (reapi.usage): a call adds to a dict under a lock, and the
usage flusher's beat adds what was counted to reapi.models.Invocation and InvocationMiss, so
there is never a database write per RPC. Memory is bounded: at most MAX_OPEN invocations and
MAX_MISSES misses per invocation wait for a flush; beyond, calls are still counted in usage
but not attributed. Records older than REAPI_INVOCATION_RETENTION_DAYS are deleted on the
same beat, at most once an hour.
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Greatest, Least
from django.utils import timezone

from reapi import upserts, usage
from reapi.auth import Principal
from reapi.digests import Digest
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.models import Invocation, InvocationMiss

log = logging.getLogger(__name__)

MAX_OPEN = 10_000
MAX_MISSES = 20_000
PRUNE_EVERY_SECONDS = 3600.0

HITS, MISSES, EXECUTED, UP, DOWN = range(5)
COUNTERS = ("hits", "misses", "executed", "bytes_up", "bytes_down")


@dataclass
class Pending:
    who: Principal
    cluster: str
    meta: re_pb2.RequestMetadata
    first: float
    last: float
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0])
    # action hash -> (size, storage, mnemonic, target, when)
    misses: dict[str, tuple[int, str, str, str, float]] = field(default_factory=dict)


_pending: dict[tuple[int, str], Pending] = {}
_lock = threading.Lock()
_pruned_at = 0.0


def _entry(who: Principal, cluster: str, meta: re_pb2.RequestMetadata | None, now: float) -> Pending | None:
    """The invocation `meta` names, made on its first call; None without a tool_invocation_id
    or past MAX_OPEN. Call under _lock."""
    if meta is None or not meta.tool_invocation_id:
        return None
    key = (who.tenant_id, meta.tool_invocation_id)
    entry = _pending.get(key)
    if entry is None:
        if len(_pending) >= MAX_OPEN:
            return None
        entry = _pending[key] = Pending(who, cluster, meta, now, now)
    entry.last = now
    return entry


def add(
    who: Principal, cluster: str, meta: re_pb2.RequestMetadata | None, counter: int, amount: int = 1
) -> None:
    """Count one call's `amount` for its invocation (nothing without a tool_invocation_id)."""
    with _lock:
        entry = _entry(who, cluster, meta, time.time())
        if entry is not None:
            entry.counts[counter] += amount


def miss(
    who: Principal, cluster: str, storage: str, meta: re_pb2.RequestMetadata | None, action: Digest
) -> None:
    """Count an action-cache miss and keep its digest for the invocation's explanations."""
    now = time.time()
    with _lock:
        entry = _entry(who, cluster, meta, now)
        if entry is None or meta is None:
            return
        entry.counts[MISSES] += 1
        if len(entry.misses) < MAX_MISSES:
            entry.misses.setdefault(
                action.hash, (action.size, storage, meta.action_mnemonic, meta.target_id, now)
            )


def take() -> dict[tuple[int, str], Pending]:
    global _pending
    with _lock:
        taken, _pending = _pending, {}
    return taken


def flush() -> int:
    """Add what was counted to the database; returns how many invocations were written."""
    written = 0
    for (tenant_id, invocation_id), entry in take().items():
        try:
            _save(tenant_id, invocation_id, entry)
            written += 1
        except IntegrityError:
            log.info("invocation of a vanished tenant dropped")
        except DatabaseError:
            log.warning("invocation flush failed; dropped", exc_info=True)
    _prune()
    return written


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


# A miss already recorded for its invocation stays as it is (reapi.upserts: compiled once, no
# model instance per miss, one row per missed action of a cold build).
_MISSES = upserts.Upsert(InvocationMiss)


def _save(tenant_id: int, invocation_id: str, entry: Pending) -> None:
    first, last = _when(entry.first), _when(entry.last)
    increments = {name: F(name) + v for name, v in zip(COUNTERS, entry.counts, strict=True)}
    with transaction.atomic():
        rows = Invocation.objects.filter(tenant_id=tenant_id, invocation_id=invocation_id)
        updated = rows.update(
            **increments, first_call=Least("first_call", first), last_call=Greatest("last_call", last)
        )
        if not updated:
            try:
                with transaction.atomic():
                    Invocation.objects.create(
                        tenant_id=tenant_id,
                        invocation_id=invocation_id,
                        correlated_invocations_id=entry.meta.correlated_invocations_id,
                        cluster=entry.cluster,
                        token_id=entry.who.token_id,
                        token_prefix=entry.who.token_prefix,
                        user_id=entry.who.user_id,
                        username=entry.who.username,
                        tool_name=entry.meta.tool_details.tool_name,
                        tool_version=entry.meta.tool_details.tool_version,
                        first_call=first,
                        last_call=last,
                        **dict(zip(COUNTERS, entry.counts, strict=True)),
                    )
            except IntegrityError:
                # Another server process made the row first.
                if not rows.update(**increments, last_call=Greatest("last_call", last)):
                    raise
        if entry.misses:
            row = rows.values_list("pk", flat=True).get()
            _MISSES.run(
                [
                    {
                        "invocation_id": row,
                        "tenant_id": tenant_id,
                        "storage": storage,
                        "cluster": entry.cluster,
                        "action_hash": action_hash,
                        "action_size": size,
                        "mnemonic": mnemonic,
                        "target_id": target,
                        "missed_at": _when(when),
                        "outputs_key": "",
                        "outputs": [],
                        "explanation": None,
                    }
                    for action_hash, (size, storage, mnemonic, target, when) in entry.misses.items()
                ]
            )


def _prune() -> None:
    global _pruned_at
    now = time.monotonic()
    if _pruned_at and now - _pruned_at < PRUNE_EVERY_SECONDS:
        return
    _pruned_at = now
    try:
        prune()
    except DatabaseError:
        log.warning("pruning old invocations failed", exc_info=True)


def prune() -> int:
    """Delete invocations (and their misses) older than REAPI_INVOCATION_RETENTION_DAYS."""
    cutoff = timezone.now() - timedelta(days=settings.REAPI_INVOCATION_RETENTION_DAYS)
    deleted, _ = Invocation.objects.filter(last_call__lt=cutoff).delete()
    return deleted


usage.on_flush(flush)
