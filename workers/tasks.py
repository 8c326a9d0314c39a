"""Celery task modules are imported from here so the worker registers them all.

Tasks are thin: they take an id and hand it to a plain function that is tested directly.
"""

import logging

from celery import Task

from reapi import operations
from reapi.errors import Unavailable
from workers import eviction, execution, monitor, sandbox  # noqa: F401  (eviction registers reapi.evict)
from workers.celery_app import app

log = logging.getLogger(__name__)


@app.task(name="reapi.execute", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def execute_operation(self: Task, operation_id: int) -> None:
    # Safe to repeat: the claim is a conditional update, so a redelivered task whose
    # operation is done or running under a live lease does nothing.
    queue = (self.request.delivery_info or {}).get("routing_key") or ""
    try:
        mon = monitor.current(queue, app.conf.worker_concurrency or 1)
    except sandbox.SandboxUnavailable as exc:
        # A Celery worker started without `manage.py worker` learns only now that it cannot
        # sandbox: the action fails at once (no path of this host in the client's message).
        log.error("cannot run actions sandboxed: %s", exc)
        operations.fail(
            operation_id, Unavailable("the worker that took this action cannot sandbox it; see its log")
        )
        return
    execution.run_operation(operation_id, mon)
