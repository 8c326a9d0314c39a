"""How a waiting Execute stream learns that its operation changed.

One thread per server process reads the versions of every watched operation in one query per
tick, so a hundred open streams cost what one does. With Redis as the broker, workers also
publish each change, which wakes that thread at once; the tick is then only a safety net.
"""

import logging
import threading
import time

import redis
from django.conf import settings
from django.db import close_old_connections

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
        self._versions: dict[int, int] = {}
        self._kick = threading.Event()
        self._started = False
        self._interval = POLL_SECONDS

    def wait(self, op_id: int, seen_version: int, timeout: float) -> bool:
        """Block until the operation's version passes `seen_version`; False on timeout."""
        self._start()
        deadline = time.monotonic() + timeout
        with self._cond:
            self._watching[op_id] = self._watching.get(op_id, 0) + 1
            # Poll now: the change may have landed between the caller's read and this wait.
            self._kick.set()
            try:
                while self._versions.get(op_id, seen_version) <= seen_version:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                left = self._watching[op_id] - 1
                if left:
                    self._watching[op_id] = left
                else:
                    del self._watching[op_id]
                    self._versions.pop(op_id, None)

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
                rows = dict(Operation.objects.filter(id__in=ids).values_list("id", "version"))
            except Exception:
                log.exception("polling operations failed")
                close_old_connections()
                time.sleep(1)
                continue
            with self._cond:
                changed = False
                for op_id, version in rows.items():
                    if op_id in self._watching and self._versions.get(op_id) != version:
                        self._versions[op_id] = version
                        changed = True
                if changed:
                    self._cond.notify_all()

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


def wait(op_id: int, seen_version: int, timeout: float) -> bool:
    return _watcher.wait(op_id, seen_version, timeout)
