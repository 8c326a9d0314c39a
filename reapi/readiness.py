"""Whether a server process should take traffic: not while it drains, nor while its database
or its cluster's storage cannot be reached. A thread looks every REAPI_READINESS_SECONDS and sets the
gRPC health status (NOT_SERVING then) and what /readyz answers."""

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage, storages
from django.db import close_old_connections, connection

log = logging.getLogger(__name__)


def unreachable(cluster: str) -> str:
    """What this process cannot reach now ("database", "storage"), or "" when it can."""
    try:
        close_old_connections()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return "database"
    finally:
        connection.close()  # also called from short-lived threads (a supervisor's /readyz)
    store = storages[f"reapi-{cluster}"]
    try:
        if isinstance(store, FileSystemStorage):
            if not Path(store.location).is_dir():
                return "storage"
        else:
            store.exists("readiness-probe")  # a HEAD request: fails when S3 is unreachable
    except Exception:
        return "storage"
    return ""


class Readiness:
    def __init__(self, cluster: str, on_change: Callable[[bool], None]) -> None:
        self.cluster = cluster
        self.on_change = on_change
        self.draining = False
        self.reachable = True
        self._stop = threading.Event()

    def ready(self) -> bool:
        return self.reachable and not self.draining

    def drain(self) -> None:
        self.draining = True
        self.on_change(False)

    def start(self) -> "Readiness":
        threading.Thread(target=self._run, name="readiness", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(settings.REAPI_READINESS_SECONDS):
            missing = unreachable(self.cluster)
            if bool(missing) == (not self.reachable):
                continue
            self.reachable = not missing
            if missing:
                log.warning("not ready: the %s cannot be reached", missing)
            else:
                log.info("ready again: database and storage reachable")
            if not self.draining:
                self.on_change(self.reachable)
