"""How a waiting Execute stream learns that its operation changed.

One thread per server process reads the versions of every watched operation in one query per
tick, so a hundred open streams cost what one does, and reads the rows that changed for their
waiters: a waiting stream holds no database connection of its own (a thousand open streams
would otherwise need a thousand). With Redis as the broker, workers also publish each change,
which wakes that thread at once; the tick is then only a safety net.
"""

import logging
import threading
import time
from typing import TYPE_CHECKING

import redis
from django.conf import settings
from django.db import close_old_connections

if TYPE_CHECKING:
    from workers.models import Operation

log = logging.getLogger(__name__)

CHANNEL = "reapi:operations"
POLL_SECONDS = 0.02
POLL_SECONDS_WITH_PUBSUB = 0.25


def redis_url() -> str | None:
    url = settings.CELERY_BROKER_URL
    return url if url.startswith(("redis://", "rediss://")) else None


_publisher: redis.Redis | None = None


def notify(op_id: int) -> None:
    """Tell watching servers that operation `op_id` changed (after the change is committed)."""
    global _publisher
    url = redis_url()
    if url is None:
        return
    try:
        if _publisher is None:
            _publisher = redis.Redis.from_url(url, socket_timeout=2)
        _publisher.publish(CHANNEL, str(op_id))
    except redis.RedisError as exc:
        # The watchers' poll still sees the change, a tick later.
        log.warning("could not publish operation %s: %s", op_id, exc)


class Watcher:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watching: dict[int, int] = {}  # operation id -> waiters
        self._rows: dict[int, Operation] = {}  # the newest row read of each watched operation
        self._kick = threading.Event()
        self._started = False
        self._interval = POLL_SECONDS

    def wait(self, op_id: int, seen_version: int, timeout: float) -> "Operation | None":
        """Block until the operation's version passes `seen_version` and return the row as
        the watcher read it; None on timeout."""
        self._start()
        deadline = time.monotonic() + timeout
        with self._cond:
            self._watching[op_id] = self._watching.get(op_id, 0) + 1
            # Poll now: the change may have landed between the caller's read and this wait.
            self._kick.set()
            try:
                while (row := self._rows.get(op_id)) is None or row.version <= seen_version:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)
                return row
            finally:
                left = self._watching[op_id] - 1
                if left:
                    self._watching[op_id] = left
                else:
                    del self._watching[op_id]
                    self._rows.pop(op_id, None)

    def _start(self) -> None:
        if self._started:
            return
        with self._cond:
            if self._started:
                return
            url = redis_url()
            if url is not None:
                self._interval = POLL_SECONDS_WITH_PUBSUB
                threading.Thread(target=self._listen, args=(url,), daemon=True, name="op-pubsub").start()
            threading.Thread(target=self._poll, daemon=True, name="op-watch").start()
            self._started = True

    def _poll(self) -> None:
        from workers.models import Operation

        while True:
            self._kick.wait(self._interval)
            self._kick.clear()
            with self._cond:
                ids = list(self._watching)
            if not ids:
                continue
            try:
                versions = dict(Operation.objects.filter(id__in=ids).values_list("id", "version"))
                with self._cond:
                    stale = [i for i, v in versions.items() if i in self._watching and self._seen(i) != v]
                # Rows only for what changed: most ticks read versions alone.
                fresh = list(Operation.objects.filter(id__in=stale)) if stale else []
            except Exception:
                log.exception("polling operations failed")
                close_old_connections()
                time.sleep(1)
                continue
            if fresh:
                with self._cond:
                    for row in fresh:
                        if row.pk in self._watching:
                            self._rows[row.pk] = row
                    self._cond.notify_all()

    def _seen(self, op_id: int) -> int | None:
        row = self._rows.get(op_id)
        return row.version if row is not None else None

    def _listen(self, url: str) -> None:
        while True:
            try:
                pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                for _message in pubsub.listen():
                    self._kick.set()
            except redis.RedisError as exc:
                log.warning("operation updates from Redis interrupted (%s); polling meanwhile", exc)
                time.sleep(1)


_watcher = Watcher()


def wait(op_id: int, seen_version: int, timeout: float) -> "Operation | None":
    """The operation's row once its version passes `seen_version`, or None after `timeout`."""
    return _watcher.wait(op_id, seen_version, timeout)
