"""Keeping each tenant within its quota: least recently used blobs go first, recent ones never;
and removing the partial uploads clients abandoned.

Run periodically by the Celery job in workers/eviction.py (and `manage.py quota evict`). For
every TenantQuota it lists the tenant's CAS blobs on that storage with their last touch,
evicts the oldest until the tenant fits its quota, and records the measurement the write
path's quota gate reads (reapi.quotas).

A blob touched within EVICTION_GRACE_SECONDS is never evicted (three hours: Bazel assumes a
remote-cache blob it was told exists stays for its build; reapi.presence relies on it too).
The stores re-check the touch time as they delete, so a blob used after the listing stays.

Action-cache entries are not evicted here: they are small, and one whose outputs were evicted
is already a miss (completeness checking in reapi.action_cache), never a dangling hit.

A tenant's partial uploads (reapi.uploads) count in its usage but are never evicted: they
expire instead, REAPI_UPLOAD_EXPIRY_HOURS after their last byte arrived (expire_uploads, run
by the same periodic job just before eviction).
"""

import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from reapi import clusters, uploads
from reapi.blobstore import BlobStore
from reapi.models import TenantQuota
from reapi.presence import EVICTION_GRACE_SECONDS

log = logging.getLogger(__name__)

# Reconciling an index lists the whole bucket prefix (1,000 keys a request): at most this often
# per storage and worker process.
RECONCILE_SECONDS = 3600.0
_reconciled_at: dict[str, float] = {}


@dataclass(frozen=True)
class Outcome:
    tenant: str
    cluster: str
    used_bytes: int
    evicted_bytes: int
    evicted_blobs: int
    evictable_bytes: int
    max_bytes: int
    hard_limit_bytes: int
    parked_bytes: int = 0  # in partial uploads, part of used_bytes, never evictable

    @property
    def over_hard_limit(self) -> bool:
        return self.used_bytes - self.evictable_bytes > self.hard_limit_bytes


def evict_all(now: float | None = None) -> list[Outcome]:
    """One pass over every quota; `now` lets tests pretend time has passed."""
    close_old_connections()
    now = time.time() if now is None else now
    outcomes = []
    for quota in TenantQuota.objects.select_related("tenant").order_by("cluster", "tenant__slug"):
        backend = clusters.backend(quota.storage_alias)
        reconcile = getattr(backend.store, "reconcile", None)
        alias = quota.storage_alias
        if reconcile is not None and time.time() - _reconciled_at.get(alias, 0.0) > RECONCILE_SECONDS:
            # Indexed stores (S3): first make the index match the bucket, so the
            # measurement below counts what is really there.
            added, dropped = reconcile()
            if added or dropped:
                log.info("%r: index reconciled, %d added, %d dropped", backend.store, added, dropped)
            _reconciled_at[alias] = time.time()
        outcome = evict_tenant(backend.store, quota, now, parked=backend.cas.parked_bytes(quota.tenant.slug))
        outcomes.append(outcome)
        if outcome.evicted_blobs or outcome.over_hard_limit:
            log.info("eviction: %s", outcome)
    return outcomes


def evict_tenant(store: BlobStore, quota: TenantQuota, now: float, parked: int = 0) -> Outcome:
    """Evict the tenant's blobs down to its quota; `parked` bytes of partial uploads count as
    used and cannot be evicted."""
    tenant = quota.tenant.slug
    cutoff = now - EVICTION_GRACE_SECONDS
    entries = sorted(store.entries(f"{tenant}/cas/"), key=lambda entry: entry[2])
    used = parked + sum(size for _key, size, _touched in entries)
    excess = used - quota.max_bytes
    victims: list[str] = []
    for key, size, touched in entries:
        if excess <= 0 or touched >= cutoff:
            break  # fits, or everything from here on was used within the grace period
        victims.append(key)
        excess -= size
    freed = store.evict(victims, cutoff) if victims else 0
    used -= freed
    evictable = sum(size for _key, size, touched in entries[len(victims) :] if touched < cutoff)
    TenantQuota.objects.filter(pk=quota.pk).update(
        used_bytes=used,
        evictable_bytes=evictable,
        evicted_bytes=freed,
        measured_at=timezone.now(),
    )
    return Outcome(
        tenant=tenant,
        cluster=quota.cluster,
        used_bytes=used,
        evicted_bytes=freed,
        evicted_blobs=len(victims),
        evictable_bytes=evictable,
        max_bytes=quota.max_bytes,
        hard_limit_bytes=quota.hard_limit,
        parked_bytes=parked,
    )


@dataclass(frozen=True)
class Expiry:
    storage: str
    files: int  # partial uploads and staging files removed
    freed_bytes: int
    multipart_uploads: int  # unfinished S3 multipart uploads aborted


def expire_uploads(now: float | None = None) -> list[Expiry]:
    """Remove what abandoned uploads left in every cluster's storage, untouched for
    REAPI_UPLOAD_EXPIRY_HOURS; `now` lets tests pretend time has passed.

    One storage failing (an unreachable bucket) is logged and does not keep the others, or
    the eviction pass after this, from running.
    """
    now = time.time() if now is None else now
    cutoff = now - settings.REAPI_UPLOAD_EXPIRY_HOURS * 3600
    expired = []
    for cluster in settings.CLUSTERS:
        alias = f"reapi-{cluster}"
        try:
            store = clusters.backend(alias).store
            files, freed = uploads.expire(store.spool_dir(), cutoff)
            # A server that died in the middle of a multipart upload leaves it in the bucket,
            # whose parts are kept (and billed) until it is aborted.
            abort_multipart = getattr(store, "abort_multipart_uploads", None)
            aborted = abort_multipart(cutoff) if abort_multipart is not None else 0
        except Exception:
            log.exception("expiring abandoned uploads in %s failed", alias)
            continue
        expiry = Expiry(alias, files, freed, aborted)
        expired.append(expiry)
        if files or aborted:
            log.info("expired uploads: %s", expiry)
    return expired
