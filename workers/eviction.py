"""The periodic eviction job: a thin Celery task over reapi.eviction.evict_all.

Scheduled by beat (CELERY_BEAT_SCHEDULE in settings) on the `maintenance` queue. Safe to run
twice at once or again after a crash: each pass re-measures and deletes only blobs that are
still the least recently used and untouched for the grace period.
"""

from reapi import eviction
from workers.celery_app import app

QUEUE = "maintenance"


@app.task(name="reapi.evict", queue=QUEUE, acks_late=True, ignore_result=True)
def evict() -> int:
    """Returns the bytes evicted (for logs)."""
    return sum(outcome.evicted_bytes for outcome in eviction.evict_all())
