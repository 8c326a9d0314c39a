"""A worker process's background duties, in one thread beside Celery's.

- heartbeat: the Worker row says the process is alive (the portal's "online"), and the lease
  of every action it runs is renewed, so nobody else takes them over;
- cancellation: running actions whose operation was cancelled get their cancel event set;
- recovery: an action whose lease lapsed (its worker was killed) is put back in its queue, at
  most REAPI_MAX_DELIVERIES deliveries in all; after that it fails, so a poison action that
  kills its worker cannot loop. This works on every broker, the filesystem one included, where
  a message taken by a dead worker is never redelivered by the broker itself.
"""

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from reapi import operations
from reapi.errors import Internal
from workers import cgroups, pools, process, sandbox
from workers.models import Operation, Worker

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Identity:
    cluster: str
    pool: str
    hostname: str
    pid: int

    @property
    def name(self) -> str:
        return f"{self.cluster}.{self.pool}.{self.pid}@{self.hostname}"

    @property
    def exec_dir(self) -> str:
        return os.path.join(settings.REAPI_EXEC_DIR, f"{self.hostname}-{self.pid}")


def heartbeat_seconds() -> float:
    return max(settings.REAPI_WORKER_LEASE_SECONDS / 3, 0.5)


def offline_after() -> datetime:
    # Three missed heartbeats and a worker counts as gone.
    return timezone.now() + timedelta(seconds=heartbeat_seconds() * 3)


class Monitor:
    def __init__(self, identity: Identity, concurrency: int) -> None:
        self.identity = identity
        self.concurrency = concurrency
        self._running: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def track(self, op_id: int) -> Iterator[threading.Event]:
        cancelled = threading.Event()
        with self._lock:
            self._running[op_id] = cancelled
        try:
            yield cancelled
        finally:
            with self._lock:
                self._running.pop(op_id, None)

    def running(self) -> list[int]:
        with self._lock:
            return list(self._running)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Register the worker; raises sandbox.SandboxUnavailable, before anything else, where
        actions could not run sandboxed."""
        self._clean_stale_exec_dirs()
        box = sandbox.current(Path(self.identity.exec_dir))
        pool = pools.get(self.identity.cluster, self.identity.pool)
        Worker.objects.update_or_create(
            name=self.identity.name,
            defaults={
                "cluster": self.identity.cluster,
                "pool": self.identity.pool,
                "hostname": self.identity.hostname,
                "pid": self.identity.pid,
                "concurrency": self.concurrency,
                "running": 0,
                "started_at": timezone.now(),
                "last_seen_at": timezone.now(),
                "offline_after": offline_after(),
                "stopped_at": None,
                "sandboxed": box.enabled,
                "network": pool.network,
            },
        )
        self.recover()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="worker-monitor")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        Worker.objects.filter(name=self.identity.name).update(stopped_at=timezone.now(), running=0)
        sandbox.release_standbys()
        shutil.rmtree(self.identity.exec_dir, ignore_errors=True)

    def _loop(self) -> None:
        next_beat = 0.0
        while not self._stop.wait(CANCEL_POLL_SECONDS):
            try:
                self.check_cancelled()
                if time.monotonic() >= next_beat:
                    self.beat()
                    self.recover()
                    self._clean_stale_exec_dirs()
                    next_beat = time.monotonic() + heartbeat_seconds()
            except Exception:
                log.exception("worker monitor pass failed; retrying")
                close_old_connections()

    # --- duties -----------------------------------------------------------------------------

    def check_cancelled(self) -> None:
        running = self.running()
        if not running:
            return
        for op_id in Operation.objects.filter(pk__in=running, cancel_requested=True).values_list(
            "pk", flat=True
        ):
            with self._lock:
                event = self._running.get(op_id)
            if event is not None and not event.is_set():
                log.info("operation %s cancelled: killing its command", op_id)
                event.set()

    def beat(self) -> None:
        running = self.running()
        if running:
            operations.renew(running, self.identity.name)
        Worker.objects.filter(name=self.identity.name).update(
            last_seen_at=timezone.now(), offline_after=offline_after(), running=len(running), stopped_at=None
        )

    def recover(self) -> None:
        from reapi.scheduler import enqueue

        for op in operations.lapsed():
            if op.attempt >= settings.REAPI_MAX_DELIVERIES:
                err = Internal(
                    f"the action's worker was lost {op.attempt} times (last {op.worker}); "
                    f"not trying again (REAPI_MAX_DELIVERIES={settings.REAPI_MAX_DELIVERIES})"
                )
                if operations.fail(op.pk, err, attempt=op.attempt):
                    log.warning("operation %s failed after %d lost deliveries", op.name, op.attempt)
            elif operations.release(op):
                log.warning("operation %s: worker %s lost; redelivering", op.name, op.worker)
                try:
                    enqueue(op)
                except Exception:
                    log.exception("redelivering operation %s failed", op.name)

    def _clean_stale_exec_dirs(self) -> None:
        """Kill the commands and remove the directories of dead workers of this host: a
        SIGKILLed worker leaves both behind (each command runs in a session of its own)."""
        root = settings.REAPI_EXEC_DIR
        os.makedirs(root, exist_ok=True)
        prefix = f"{self.identity.hostname}-"
        for entry in os.scandir(root):
            pid = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
            if pid.isdigit() and not _alive(int(pid)):
                for group_file in Path(entry.path).glob("*/pgid"):
                    process.kill_left_behind(group_file)
                controllers = cgroups.Controllers.find() if settings.REAPI_SANDBOX else None
                if controllers is not None:
                    cgroups.remove_stale(controllers, sandbox.group_prefix(int(pid)))
                log.warning("removing what dead worker %s left in %s", pid, entry.path)
                force_rmtree(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def force_rmtree(path: str) -> None:
    """rmtree that also gets through directories an action made read-only."""

    def make_writable(func, p, _exc):  # type: ignore[no-untyped-def]
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable)


_current: Monitor | None = None
_install_lock = threading.Lock()


def current(queue: str, concurrency: int = 1) -> Monitor:
    """This process's monitor: the one `manage.py worker` installed, or, in a Celery worker
    started some other way, one for the queue the task came from, started on first use (so
    leases, heartbeats and cancellation work there too)."""
    global _current
    with _install_lock:
        if _current is None:
            _, cluster, pool = queue.split(".", 2) if queue.count(".") >= 2 else ("", "?", "?")
            monitor = Monitor(Identity(cluster, pool, socket.gethostname(), os.getpid()), concurrency)
            monitor.start()
            _current = monitor
        return _current


def install(monitor: Monitor) -> None:
    global _current
    _current = monitor
