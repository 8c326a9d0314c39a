"""Celery task modules are imported from here so the worker registers them all.

Tasks are thin: they take an id and hand it to a plain function that is tested directly.
"""

from celery import Task

from workers import eviction, execution, monitor  # noqa: F401  (eviction registers reapi.evict)
from workers.celery_app import app


@app.task(name="reapi.execute", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def execute_operation(self: Task, operation_id: int) -> None:
    # Safe to repeat: the claim is a conditional update, so a redelivered task whose
    # operation is done or running under a live lease does nothing.
    queue = (self.request.delivery_info or {}).get("routing_key") or ""
    execution.run_operation(operation_id, monitor.current(queue, app.conf.worker_concurrency or 1))
