"""Celery task modules are imported from here so the worker registers them all."""
