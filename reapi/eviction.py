"""Keeping each tenant within its quota: least recently used blobs go first, recent ones never.

Run periodically by the Celery job in workers/eviction.py (and `manage.py quota evict`). For
every TenantQuota it lists the tenant's CAS blobs on that storage with their last touch,
evicts the oldest until the tenant fits its quota, and records the measurement the write
path's quota gate reads (reapi.quotas).

A blob touched within EVICTION_GRACE_SECONDS is never evicted (three hours: Bazel assumes a
remote-cache blob it was told exists stays for its build; reapi.presence relies on it too).
The stores re-check the touch time as they delete, so a blob used after the listing stays.

Action-cache entries are not evicted here: they are small, and one whose outputs were evicted
is already a miss (completeness checking in reapi.action_cache), never a dangling hit.
"""

import logging
import time
from dataclasses import dataclass

from django.db import close_old_connections
from django.utils import timezone

from reapi import clusters
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
        outcome = evict_tenant(backend.store, quota, now)
        outcomes.append(outcome)
        if outcome.evicted_blobs or outcome.over_hard_limit:
            log.info("eviction: %s", outcome)
    return outcomes


def evict_tenant(store: BlobStore, quota: TenantQuota, now: float) -> Outcome:
    tenant = quota.tenant.slug
    cutoff = now - EVICTION_GRACE_SECONDS
    entries = sorted(store.entries(f"{tenant}/cas/"), key=lambda entry: entry[2])
    used = sum(size for _key, size, _touched in entries)
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
    )
