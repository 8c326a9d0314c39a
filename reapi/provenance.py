"""Who wrote each action-cache entry, and purging everything one token wrote.

Recording (write-ahead, group commit). UpdateActionResult records its writer *before* the entry
is stored (reapi.action_cache.ActionCache.put), so no entry is ever visible without a record:
a server that dies between the two leaves a record of an entry that does not exist, which a
purge skips harmlessly, never an entry no purge can find. Records are not written one
transaction per call: calls hand them to one writer thread per process, which commits whatever
is waiting in a single transaction and wakes the callers. Under load a transaction carries many
records; alone, a call waits for one small transaction.

Purging. The transaction that commits records first locks the writers' token rows and
drops records of revoked tokens (their calls fail UNAUTHENTICATED and store nothing). A purge
starts after the revocation has committed, so every record it must find was committed before
it began: the revocation waits for the token row lock. What is left is a call whose record
committed just before the revocation and whose entry is stored just after the purge deleted
it; the purge therefore deletes again after PURGE_SETTLE_SECONDS, longer than one storage put.

Votes. In pass-through, a workstation's result in CI's storage carries every (user, token) that
wrote an identical result (reapi.ac_entries), and `confirmed` serves it to CI once enough
distinct users did. Such a write also records an ActionVote in the same transaction, so a purge
finds the entries the token vouched for without being their last writer and withdraws its vote
there (an entry left with no vote goes).
"""

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from portal import audit
from portal.models import AccessToken
from reapi import upserts
from reapi.ac_entries import Author
from reapi.digests import Digest
from reapi.errors import Unauthenticated
from reapi.models import ActionProvenance, ActionVote, Asset

log = logging.getLogger(__name__)

PURGE_SETTLE_SECONDS = 2.0
BATCH_LIMIT = 500


@dataclass(frozen=True)
class Writer:
    """The credential and client behind one write (from the principal and RequestMetadata)."""

    token_id: int | None
    token_prefix: str
    user_id: int | None
    username: str
    cluster: str
    tool_name: str = ""
    tool_version: str = ""
    tool_invocation_id: str = ""
    correlated_invocations_id: str = ""
    # What Bazel says the action is (Bazel 5 and later send them): shown on the Workers page.
    action_mnemonic: str = ""
    target_id: str = ""

    @property
    def author(self) -> Author:
        """As the action cache's entry header records it."""
        return Author(self.cluster == "external", self.user_id or 0, self.token_id or 0)


# Where a workstation's write is a vote CI may count: the internal storage (pass-through).
VOTED_STORAGE = "reapi-internal"


def _held() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class _Pending:
    # An ActionProvenance row by attribute name: no model instance per write (see _commit).
    row: dict[str, Any]
    token_id: int | None
    # Held until the writer thread is done with this record, then released once: the caller
    # waits by taking it. (An Event builds a Condition, and a lock of its own on every wait.)
    done: threading.Lock = field(default_factory=_held)
    error: BaseException | None = None


class Recorder:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def record(self, storage: str, tenant: str, action: Digest, writer: Writer) -> None:
        """Commit the record of one write; returns once it is durable."""
        pending = _Pending(
            {
                "storage": storage,
                "tenant": tenant,
                "action_hash": action.hash,
                "action_size": action.size,
                "token_id": writer.token_id,
                "token_prefix": writer.token_prefix,
                "user_id": writer.user_id,
                "username": writer.username[:150],
                "cluster": writer.cluster,
                "written_at": timezone.now(),
                "tool_name": writer.tool_name[:100],
                "tool_version": writer.tool_version[:100],
                "tool_invocation_id": writer.tool_invocation_id[:100],
                "correlated_invocations_id": writer.correlated_invocations_id[:100],
            },
            writer.token_id,
        )
        self._start()
        self._queue.put(pending)
        pending.done.acquire()
        if pending.error is not None:
            raise pending.error

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, daemon=True, name="provenance")
                    self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH_LIMIT:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                _commit(batch)
            except Exception as exc:
                log.exception("recording provenance of %d action-cache writes failed", len(batch))
                connection.close()  # the next batch starts on a fresh connection
                for pending in batch:
                    pending.error = exc
            for pending in batch:
                pending.done.release()


# Statements compiled once (reapi.upserts): bulk_create compiled them on every batch, most of
# the Python work of an UpdateActionResult.
_PROVENANCE = upserts.Upsert(
    ActionProvenance,
    unique=["storage", "tenant", "action_hash"],
    update=[
        "action_size",
        "token_id",
        "token_prefix",
        "user_id",
        "username",
        "cluster",
        "written_at",
        "tool_name",
        "tool_version",
        "tool_invocation_id",
        "correlated_invocations_id",
    ],
)
_VOTE = upserts.Upsert(
    ActionVote,
    unique=["storage", "tenant", "action_hash", "token_id"],
    update=["action_size", "user_id", "written_at"],
)


# (database alias, how many ids) -> the SELECT ... FOR UPDATE of _live_tokens, as Django compiled it.
_LIVE_TOKENS_SQL: dict[tuple[str, int], str] = {}


def _live_tokens(token_ids: list[int]) -> set[int]:
    """Which of these tokens are not revoked, their rows locked until the transaction ends."""
    if not token_ids:
        return set()
    key = (connection.alias, len(token_ids))
    sql = _LIVE_TOKENS_SQL.get(key)
    if sql is None:
        query = (
            AccessToken.objects.select_for_update()
            .filter(id__in=token_ids, revoked_at__isnull=True)
            .values_list("id", flat=True)
            .query
        )
        sql, params = query.get_compiler(using=connection.alias).as_sql()
        # The ids are its only parameters, in this order: then any ids of this count fit it.
        if list(params) != token_ids:
            raise RuntimeError(f"the live-token query does not take just the ids: {sql}")
        _LIVE_TOKENS_SQL[key] = sql
    with connection.cursor() as cursor:
        cursor.execute(sql, token_ids)
        return {token_id for (token_id,) in cursor.fetchall()}


def _commit(batch: list[_Pending]) -> None:
    close_old_connections()
    token_ids = {p.token_id for p in batch if p.token_id is not None}
    with transaction.atomic():
        # Locks the token rows until commit, so a revocation is ordered before or after
        # this whole batch (see the module docstring).
        live = _live_tokens(sorted(token_ids))
        rows = {}
        written = []
        for pending in batch:
            row = pending.row
            if pending.token_id is not None and pending.token_id not in live:
                pending.error = Unauthenticated(
                    f"personal access token {row['token_prefix']}… has been revoked"
                )
                continue
            # One row per entry: within a batch the last write wins, as in storage.
            rows[(row["storage"], row["tenant"], row["action_hash"])] = row
            written.append(row)
        # Every writer's vote, not just the last: each write added its user to the entry.
        votes = {}
        for row in written:
            if (
                row["cluster"] == "external"
                and row["storage"] == VOTED_STORAGE
                and row["token_id"] is not None
            ):
                votes[(row["storage"], row["tenant"], row["action_hash"], row["token_id"])] = {
                    "storage": row["storage"],
                    "tenant": row["tenant"],
                    "action_hash": row["action_hash"],
                    "action_size": row["action_size"],
                    "token_id": row["token_id"],
                    "user_id": row["user_id"],
                    "written_at": row["written_at"],
                }
        _VOTE.run(list(votes.values()))
        _PROVENANCE.run(list(rows.values()))


_recorder = Recorder()


def record(storage: str, tenant: str, action: Digest, writer: Writer) -> None:
    _recorder.record(storage, tenant, action, writer)


class PurgeError(ValueError):
    pass


def purge_token(token_id: int, settle_seconds: float = PURGE_SETTLE_SECONDS) -> int:
    """Delete every action-cache entry whose last writer was this token; returns how many.

    The token must be revoked first (or deleted), so it can write nothing more. Entries
    another token rewrote since are that token's now and stay.
    """
    from reapi import clusters

    token = AccessToken.objects.select_related("tenant").filter(pk=token_id).first()
    if token is not None and token.revoked_at is None:
        raise PurgeError(f"token {token.prefix}… is still valid: revoke it before purging what it wrote")
    started = timezone.now()

    def delete_entries(since: timedelta | None) -> list[int]:
        rows = ActionProvenance.objects.filter(token_id=token_id)
        if since is not None:
            rows = rows.filter(written_at__gte=started - since)
        ids = []
        for row in rows.iterator():
            clusters.backend(row.storage).action_cache.delete(
                row.tenant, Digest(row.action_hash, row.action_size)
            )
            ids.append(row.id)
        return ids

    def withdraw_votes(since: timedelta | None) -> int:
        rows = ActionVote.objects.filter(token_id=token_id)
        if since is not None:
            rows = rows.filter(written_at__gte=started - since)
        changed = 0
        for row in rows.iterator():
            changed += clusters.backend(row.storage).action_cache.withdraw(
                row.tenant, Digest(row.action_hash, row.action_size), token_id
            )
        return changed

    def delete_pushed_assets() -> int:
        # Remote Asset API pushes are the token's claims about what a URI holds (downloads by
        # the server are not: their content came from the origin).
        deleted, _ = Asset.objects.filter(token_id=token_id, origin=Asset.Origin.PUSHED).delete()
        return deleted

    ids = delete_entries(None)
    withdrawn = withdraw_votes(None)
    assets = delete_pushed_assets()
    if settle_seconds > 0:
        time.sleep(settle_seconds)
        # Only writes recorded just before the revocation can have been stored after the
        # first pass; a minute's margin covers clocks between servers.
        delete_entries(timedelta(minutes=1))
        withdrawn += withdraw_votes(timedelta(minutes=1))
        assets += delete_pushed_assets()
    # Rows rewritten by another token since the first pass are not this token's any more.
    for i in range(0, len(ids), BATCH_LIMIT):
        ActionProvenance.objects.filter(id__in=ids[i : i + BATCH_LIMIT], token_id=token_id).delete()
    ActionVote.objects.filter(token_id=token_id).delete()
    if token is not None:
        # Only what there was: the event reads as before otherwise.
        extra: dict[str, Any] = {}
        if withdrawn:
            extra["votes_withdrawn"] = withdrawn
        if assets:
            extra["assets"] = assets
        audit.record("token.purge", tenant=token.tenant, token_prefix=token.prefix, entries=len(ids), **extra)
    return len(ids)


def legacy_author(storage: str, tenant: str, action: Digest) -> Author | None:
    """Who last wrote an entry stored before entries carried their origin, from its provenance
    record; None if there is none (reapi.action_cache.ActionCache._legacy)."""
    close_old_connections()
    row = (
        ActionProvenance.objects.filter(storage=storage, tenant=tenant, action_hash=action.hash)
        .values_list("cluster", "user_id", "token_id")
        .first()
    )
    if row is None:
        return None
    cluster, user_id, token_id = row
    return Author(cluster == "external", user_id or 0, token_id or 0)
