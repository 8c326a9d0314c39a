"""Celery task modules are imported from here so the worker registers them all."""

from workers import eviction  # noqa: F401  (registers reapi.evict)
