"""The periodic eviction job: a thin Celery task over reapi.eviction.expire_uploads and
reapi.eviction.evict_all.

Scheduled by beat (CELERY_BEAT_SCHEDULE in settings) on the `maintenance` queue. Safe to run
twice at once or again after a crash: each pass removes only partial uploads still untouched
for REAPI_UPLOAD_EXPIRY_HOURS and not held by a stream, re-measures, and deletes only blobs
that are still the least recently used and untouched for the grace period.
"""

from reapi import eviction
from workers.celery_app import app

QUEUE = "maintenance"


@app.task(name="reapi.evict", queue=QUEUE, acks_late=True, ignore_result=True)
def evict() -> int:
    """Returns the bytes evicted (for logs)."""
    # Expired partial uploads first, so the measurement below no longer counts them.
    eviction.expire_uploads()
    return sum(outcome.evicted_bytes for outcome in eviction.evict_all())
