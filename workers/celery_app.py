"""The Celery application: execution tasks (one queue per cluster and pool) and periodic jobs.

Settings come from Django's settings under the CELERY_ namespace; the broker defaults to the
filesystem transport in DATA_DIR, which needs no server (CELERY_BROKER_URL selects Redis or
RabbitMQ at scale).
"""

import os

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# Task modules import models: the app registry must be ready before autodiscovery, also when
# a worker is started as `celery -A workers.celery_app worker` rather than through manage.py.
django.setup()

app = Celery("workers")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)
