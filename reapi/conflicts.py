"""Conflicts: CI wrote a result that differs from the workstations' result it replaced.

README "What CI accepts from workstations". CI's result wins for everyone (it replaces the
entry); the conflict is a reproducibility bug worth showing, so it is kept as a ResultConflict
with both writers, both results' digests and outputs, and when, for the Cache mode page.
Recording one never fails the write that found it.
"""

import logging
from datetime import UTC, datetime

from django.contrib.auth import get_user_model
from django.db import close_old_connections

from portal.models import AccessToken
from reapi import ac_entries, digests
from reapi.ac_entries import Entry
from reapi.action_cache import OnConflict
from reapi.digests import Digest
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.models import ResultConflict

log = logging.getLogger(__name__)


def recorder(tenant_id: int, action: Digest, ci_user: str, ci_token: str) -> OnConflict:
    """The action cache's on_conflict for one write by CI."""

    def on_conflict(theirs: Entry, their_result: re_pb2.ActionResult, ours: re_pb2.ActionResult) -> None:
        try:
            record(tenant_id, action, theirs, their_result, ours, ci_user, ci_token)
        except Exception:
            log.exception("recording the result conflict on action %s failed", action)

    return on_conflict


def record(
    tenant_id: int,
    action: Digest,
    theirs: Entry,
    their_result: re_pb2.ActionResult,
    ours: re_pb2.ActionResult,
    ci_user: str,
    ci_token: str,
) -> ResultConflict:
    close_old_connections()
    user_ids = [u for u, _ in theirs.voters if u]
    token_ids = [t for _, t in theirs.voters if t]
    names = dict(get_user_model().objects.filter(id__in=user_ids).values_list("id", "username"))
    prefixes = dict(AccessToken.objects.filter(id__in=token_ids).values_list("id", "prefix"))
    written = datetime.fromtimestamp(theirs.written_at, UTC) if theirs.written_at else None
    conflict = ResultConflict.objects.create(
        tenant_id=tenant_id,
        action_hash=action.hash,
        action_size=action.size,
        workstation_users=", ".join(names.get(u, f"user {u}") for u in user_ids)[:500] or "unknown",
        workstation_tokens=", ".join(prefixes.get(t, "?") for t in token_ids)[:200],
        workstation_written_at=written,
        workstation_result=str(digests.of(theirs.payload)),
        workstation_outputs=ac_entries.summary(their_result),
        ci_user=ci_user[:150],
        ci_token=ci_token[:40],
        ci_result=str(digests.of(ours.SerializeToString(deterministic=True))),
        ci_outputs=ac_entries.summary(ours),
    )
    log.warning(
        "action %s: CI's result (%s) replaced a different one workstations wrote (%s, by %s)",
        action,
        conflict.ci_result,
        conflict.workstation_result,
        conflict.workstation_users,
    )
    return conflict
