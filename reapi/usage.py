"""Usage counters: action-cache hits and misses, bytes stored and served, per tenant, cluster,
UTC day and credential (its member and token, so the portal can split them). RPCs only add to a dict under a lock; a background thread adds what was counted to
portal.models.UsageDay every REAPI_USAGE_FLUSH_SECONDS, so there is never a database write per
RPC. A failed flush keeps its counts for the next one; a stopping server flushes once more."""

import logging
import threading
import time
from collections.abc import Callable
from datetime import date

from django.conf import settings
from django.db import DatabaseError, IntegrityError, close_old_connections, transaction
from django.db.models import F

from portal.models import UsageDay
from reapi.auth import Principal

log = logging.getLogger(__name__)

HITS, MISSES, STORED, SERVED = range(4)
FIELDS = ("hits", "misses", "bytes_stored", "bytes_served")
# tenant id, cluster, days since the epoch (UTC), user id, token id (None: a CI runner's JWT)
Key = tuple[int, str, int, int | None, int | None]

_counts: dict[Key, list[int]] = {}
_lock = threading.Lock()
# Other in-memory counters saved on the same beat (reapi.assets.Hits.flush).
_hooks: list[Callable[[], object]] = []


def on_flush(hook: Callable[[], object]) -> None:
    """Run `hook` after every flush of the usage counters, and once more when a server stops."""
    _hooks.append(hook)


def _run_hooks() -> None:
    for hook in _hooks:
        try:
            hook()
        except Exception:
            log.exception("flushing %s failed", getattr(hook, "__qualname__", hook))


def add(who: Principal, cluster: str, field: int, amount: int = 1) -> None:
    key = (who.tenant_id, cluster, int(time.time()) // 86400, who.user_id, who.token_id)
    with _lock:
        row = _counts.get(key)
        if row is None:
            row = _counts[key] = [0, 0, 0, 0]
        row[field] += amount


def take() -> dict[Key, list[int]]:
    global _counts
    with _lock:
        taken, _counts = _counts, {}
    return taken


def _give_back(rows: dict[Key, list[int]]) -> None:
    with _lock:
        for key, values in rows.items():
            row = _counts.setdefault(key, [0, 0, 0, 0])
            for i, v in enumerate(values):
                row[i] += v


def flush() -> int:
    """Add the counts to the database; returns how many rows were written."""
    rows = take()
    if not rows:
        return 0
    close_old_connections()
    written = 0
    failed: dict[Key, list[int]] = {}
    for key, values in rows.items():
        try:
            _upsert(key, values)
            written += 1
        except IntegrityError:
            log.info("usage for a vanished tenant, user or token %s dropped", key)
        except DatabaseError:
            log.warning("usage flush failed; kept for the next one", exc_info=True)
            failed[key] = values
    if failed:
        _give_back(failed)
    return written


def _upsert(key: Key, values: list[int]) -> None:
    tenant_id, cluster, day_number, user_id, token_id = key
    day = date.fromordinal(date(1970, 1, 1).toordinal() + day_number)
    increments = {name: F(name) + v for name, v in zip(FIELDS, values, strict=True)}
    where = {"tenant_id": tenant_id, "cluster": cluster, "day": day, "user_id": user_id, "token_id": token_id}
    with transaction.atomic():
        # Matched on the first row: NULLs never collide in the unique constraint, so two
        # processes may each have made a row for a CI runner's day; totals add them up.
        first = UsageDay.objects.filter(**where).order_by("pk").values("pk")[:1]
        rows = UsageDay.objects.filter(pk__in=first)
        if rows.update(**increments):
            return
        try:
            with transaction.atomic():
                UsageDay.objects.create(**where, **dict(zip(FIELDS, values, strict=True)))
        except IntegrityError:
            # Another server process created the row first (or the tenant is gone: then the
            # update below changes nothing and the counts are dropped with it).
            if not rows.update(**increments):
                raise


class Flusher:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-flusher", daemon=True)

    def start(self) -> "Flusher":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                flush()
            except Exception:
                log.exception("usage flush failed")
            _run_hooks()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        try:
            flush()
        except Exception:
            log.exception("last usage flush failed")
        _run_hooks()


def start_flusher() -> Flusher:
    return Flusher(settings.REAPI_USAGE_FLUSH_SECONDS).start()
