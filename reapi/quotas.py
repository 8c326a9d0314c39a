"""Per-tenant byte quotas on each cluster's storage: setting them, and refusing writes over them.

The eviction job (reapi.eviction) measures each tenant with a quota, evicts least recently
used blobs down to the quota, and records what is left: `used_bytes`, of which
`evictable_bytes` could still go. Blobs touched within the eviction grace can never go, so
`used - evictable` is what the tenant holds no matter what the job does.

A server process refuses a write (RESOURCE_EXHAUSTED) when that unevictable part, plus what
this process has written since the measurement, plus the write itself, would pass the hard
limit: the tenant is over its limit and eviction cannot help. Reads are never refused. The
measurement is re-read every REAPI_CREDENTIAL_TTL_SECONDS, like credentials, so a new quota
or a new measurement reaches running servers within seconds.
"""

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import close_old_connections

from portal.env import parse_size
from portal.models import Tenant
from reapi.errors import ResourceExhausted
from reapi.models import TenantQuota

log = logging.getLogger(__name__)


class QuotaError(ValueError):
    pass


def set_quota(
    tenant: Tenant, cluster: str, max_bytes: int, hard_limit_bytes: int | None = None
) -> TenantQuota:
    if cluster not in settings.CLUSTERS:
        raise QuotaError(f"unknown cluster {cluster!r} (choose {', '.join(settings.CLUSTERS)})")
    if max_bytes <= 0:
        raise QuotaError("a quota must be a positive number of bytes")
    if hard_limit_bytes is not None and hard_limit_bytes < max_bytes:
        raise QuotaError("the hard limit cannot be below the quota")
    quota, _ = TenantQuota.objects.update_or_create(
        tenant=tenant,
        cluster=cluster,
        defaults={"max_bytes": max_bytes, "hard_limit_bytes": hard_limit_bytes},
    )
    return quota


def remove_quota(tenant: Tenant, cluster: str) -> bool:
    deleted, _ = TenantQuota.objects.filter(tenant=tenant, cluster=cluster).delete()
    return bool(deleted)


def parse_bytes(text: str) -> int:
    """'500M', '10G', '1T' or a plain number of bytes (binary multiples)."""
    try:
        return parse_size(text)
    except ValueError:
        raise QuotaError(f"{text!r} is not a size (as in 500M, 10G)") from None


@dataclass
class _Limit:
    hard: int
    pinned: int  # bytes the last measurement found unevictable
    measured_at: datetime | None
    written: int = 0  # bytes this process admitted since that measurement


class Gate:
    """Admission for one storage alias in one server process (reapi.cas.Admission)."""

    def __init__(self, cluster: str, refresh_seconds: float | None = None) -> None:
        self.cluster = cluster
        self.refresh_seconds = (
            settings.REAPI_CREDENTIAL_TTL_SECONDS if refresh_seconds is None else refresh_seconds
        )
        self._limits: dict[str, _Limit] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def admit(self, tenant: str, nbytes: int) -> None:
        if time.monotonic() - self._loaded_at > self.refresh_seconds:
            self._reload()
        limit = self._limits.get(tenant)
        if limit is None:
            return
        with self._lock:
            if limit.pinned + limit.written + nbytes > limit.hard:
                raise ResourceExhausted(
                    f"tenant {tenant} is over its hard limit of {limit.hard} bytes on the "
                    f"{self.cluster} storage and nothing there can be evicted yet (blobs used "
                    "in the last 3 hours are kept); reads still work"
                )
            limit.written += nbytes

    def _reload(self) -> None:
        with self._lock:
            if time.monotonic() - self._loaded_at <= self.refresh_seconds:
                return
            try:
                close_old_connections()
                rows = list(
                    TenantQuota.objects.filter(cluster=self.cluster).values_list(
                        "tenant__slug",
                        "max_bytes",
                        "hard_limit_bytes",
                        "used_bytes",
                        "evictable_bytes",
                        "measured_at",
                    )
                )
            except Exception:
                # Keep enforcing what we knew: a database hiccup must not fail writes.
                log.exception("reading quotas for the %s storage failed", self.cluster)
                self._loaded_at = time.monotonic()
                return
            limits = {}
            for slug, max_bytes, hard, used, evictable, measured_at in rows:
                old = self._limits.get(slug)
                limits[slug] = _Limit(
                    hard=max_bytes if hard is None else hard,
                    pinned=max(used - evictable, 0),
                    measured_at=measured_at,
                    written=old.written if old is not None and old.measured_at == measured_at else 0,
                )
            self._limits = limits
            self._loaded_at = time.monotonic()
