"""Reading invocations for people: the CLI, the portal's pages and the REST API ask here."""

import time
from typing import Any

from django.db.models import QuerySet

from reapi import explain
from reapi.models import Invocation, InvocationMiss

MAX_EXPLAINED = 200  # misses explained for one view; the rest say so
# Explanations not yet kept are computed for this long per view; the rest wait for the next.
EXPLAIN_SECONDS = 5.0
LATER = {"state": "later", "changes": [], "text": "not explained yet: open the page again to explain more"}


def of_tenant(tenant_id: int, user_id: int | None = None) -> QuerySet[Invocation]:
    """A tenant's invocations, most recent first; with `user_id`, only those made with that
    member's own credentials."""
    rows = Invocation.objects.filter(tenant_id=tenant_id)
    if user_id is not None:
        rows = rows.filter(user_id=user_id)
    return rows.order_by("-last_call", "-id")


def misses(invocation: Invocation, action_hash: str | None = None) -> QuerySet[InvocationMiss]:
    rows = invocation.missed.select_related("tenant").order_by("missed_at", "id")
    if action_hash:
        rows = rows.filter(action_hash=action_hash.split("/")[0].lower())
    return rows


def explained(invocation: Invocation, action_hash: str | None = None) -> list[dict[str, Any]]:
    """Each miss (at most MAX_EXPLAINED) with its output paths and explanation."""
    found = []
    deadline = time.monotonic() + EXPLAIN_SECONDS
    for miss in misses(invocation, action_hash)[:MAX_EXPLAINED]:
        why = explain.explain(miss) if miss.explanation or time.monotonic() < deadline else dict(LATER)
        found.append(
            {
                "action": f"{miss.action_hash}/{miss.action_size}",
                "mnemonic": miss.mnemonic,
                "target": miss.target_id,
                "outputs": list(miss.outputs),
                "explanation": why,
            }
        )
    return found


def summary(row: Invocation) -> dict[str, Any]:
    return {
        "id": row.invocation_id,
        "correlated_invocations_id": row.correlated_invocations_id,
        "cluster": row.cluster,
        "user": row.username,
        "token": row.token_prefix,
        "tool": f"{row.tool_name} {row.tool_version}".strip(),
        "first_call": row.first_call.isoformat(),
        "last_call": row.last_call.isoformat(),
        "duration_seconds": round(row.duration, 3),
        "hits": row.hits,
        "misses": row.misses,
        "hit_rate": None if row.hit_rate is None else round(row.hit_rate, 4),
        "executed": row.executed,
        "bytes_up": row.bytes_up,
        "bytes_down": row.bytes_down,
    }
