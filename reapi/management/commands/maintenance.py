"""`manage.py maintenance`: the Celery worker for periodic jobs, with beat embedded.

Consumes the `maintenance` queue and schedules CELERY_BEAT_SCHEDULE (eviction every
REAPI_EVICTION_INTERVAL_SECONDS). Run one per deployment: two beats would schedule every job
twice (harmless for eviction, which re-measures, but wasteful).
"""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Run the worker for periodic jobs (eviction), with its beat scheduler."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loglevel", default="INFO")
        parser.add_argument(
            "--schedule", default=settings.CELERY_BEAT_SCHEDULE_FILENAME, help="beat's state file"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from workers.celery_app import app
        from workers.eviction import QUEUE

        app.worker_main(
            [
                "worker",
                "--beat",
                f"--queues={QUEUE}",
                f"--schedule={options['schedule']}",
                "--pool=solo",
                f"--loglevel={options['loglevel']}",
                "--hostname=maintenance@%h",
                # Broadcast features the filesystem broker lacks, and a slower start.
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
