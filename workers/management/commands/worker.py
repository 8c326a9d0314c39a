"""`manage.py worker --cluster C --pool P`: a Celery worker on that pool's queue.

Actions run as child processes, so Celery's thread pool is enough (and lets one thread watch
the lease, heartbeat and cancellations for all of them). Gossip, mingle and broker heartbeats
are off: they need broadcast support the filesystem broker lacks, and slow the start.
"""

import os
import socket
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers import pools, sandbox


class Command(BaseCommand):
    help = "Run a remote-execution worker for one cluster and pool."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--cluster", choices=settings.CLUSTERS, required=True)
        parser.add_argument("--pool", required=True, help="a pool of REAPI_POOLS_<CLUSTER>, e.g. x86-64")
        parser.add_argument(
            "--concurrency",
            type=int,
            default=os.cpu_count() or 1,
            help="actions run at once (default: cores)",
        )
        parser.add_argument("--loglevel", default="INFO")
        parser.add_argument(
            "--metrics-listen",
            default="",
            help="HOST:PORT for /metrics, /healthz and /readyz over HTTP (default: none)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from workers.celery_app import app
        from workers.monitor import Identity, Monitor, install

        cluster, concurrency = options["cluster"], options["concurrency"]
        try:
            pool = pools.get(cluster, options["pool"])
        except pools.PoolConfigError as exc:
            raise CommandError(str(exc)) from None
        if concurrency < 1:
            raise CommandError("--concurrency must be at least 1")
        identity = Identity(cluster, pool.name, socket.gethostname(), os.getpid())
        monitor = Monitor(identity, concurrency)
        install(monitor)
        try:
            monitor.start()
        except sandbox.SandboxUnavailable as exc:
            raise CommandError(f"cannot run actions sandboxed: {exc}") from None
        box = sandbox.current(Path(identity.exec_dir))
        if options["metrics_listen"]:
            from reapi import metrics_http

            try:
                # Its actions' queue wait and run time (reapi_execution_duration_seconds).
                metrics_http.start(options["metrics_listen"], lambda: True)
            except (OSError, ValueError) as exc:
                raise CommandError(str(exc)) from None
        self.stdout.write(
            f"worker {identity.name}: queue {pool.queue(cluster)}, {concurrency} at once, "
            f"actions {box.describe()}"
            + (", network allowed on request (network=on)" if pool.network else "")
        )
        try:
            app.worker_main(
                [
                    "worker",
                    f"--queues={pool.queue(cluster)}",
                    f"--hostname={identity.name}",
                    "--pool=threads",
                    f"--concurrency={concurrency}",
                    f"--loglevel={options['loglevel']}",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ]
            )
        finally:
            monitor.stop()
