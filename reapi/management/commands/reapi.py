"""`manage.py reapi serve --cluster internal|external --listen HOST:PORT [--processes N]
[--metrics-listen HOST:PORT]`."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.supervise import start_child


class Command(BaseCommand):
    help = "Serve the REAPI v2 gRPC endpoint of one cluster."
    # The gRPC server needs none of the portal's URL or template checks, and starts faster.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        serve = sub.add_parser("serve", help="serve gRPC until SIGTERM/SIGINT")
        serve.add_argument("--cluster", choices=settings.CLUSTERS, required=True)
        serve.add_argument("--listen", required=True, help="HOST:PORT, e.g. 127.0.0.1:8980")
        serve.add_argument(
            "--processes",
            type=int,
            default=1,
            help="server processes sharing the port (SO_REUSEPORT); Python serves one core per process",
        )
        serve.add_argument("--threads", type=int, default=32, help="handler threads per process")
        serve.add_argument(
            "--metrics-listen",
            default=settings.REAPI_METRICS_LISTEN,
            help="HOST:PORT for /metrics, /healthz and /readyz over HTTP (default REAPI_METRICS_LISTEN; empty: none)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["processes"] < 1:
            raise CommandError("--processes must be at least 1")
        if options["processes"] == 1:
            from reapi.server import serve

            try:
                serve(options["cluster"], options["listen"], options["threads"], options["metrics_listen"])
            except (OSError, ValueError) as exc:
                raise CommandError(str(exc)) from None
            return
        self._supervise(options)

    def _supervise(self, options: dict[str, Any]) -> None:
        # Each child is a whole server process: gRPC's core must not be forked once started.
        argv = [
            sys.executable,
            os.path.abspath(sys.argv[0]),
            "reapi",
            "serve",
            "--cluster",
            options["cluster"],
            "--listen",
            options["listen"],
            "--threads",
            str(options["threads"]),
            "--metrics-listen=",  # the supervisor answers scrapes for all of them
        ]
        metrics_dir = ""
        draining = False
        if options["metrics_listen"]:
            # prometheus_client's multiprocess mode: each child writes its values to files here
            # (it reads the variable when it is first imported, in the child), and a scrape of
            # the supervisor adds them up.
            metrics_dir = tempfile.mkdtemp(prefix="reapi-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        children = [start_child(argv) for _ in range(options["processes"])]
        if metrics_dir:
            from reapi import metrics_http
            from reapi.execution_metrics import ExecutionCollector
            from reapi.readiness import unreachable

            def ready() -> bool:
                alive = all(child.poll() is None for child in children)
                return alive and not draining and not unreachable(options["cluster"])

            try:
                metrics_http.start(
                    options["metrics_listen"], ready, (ExecutionCollector(options["cluster"]),)
                )
            except (OSError, ValueError) as exc:
                for child in children:
                    child.terminate()
                raise CommandError(str(exc)) from None

        def forward(signum: int, _frame: object) -> None:
            nonlocal draining
            draining = True
            for child in children:
                child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        codes = [_wait(child) for child in children]
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if any(codes):
            raise CommandError(f"server processes exited with {codes}")


def _wait(child: "subprocess.Popen[bytes]") -> int:
    # In steps: a signal taken by the metrics listener's thread would not interrupt an endless
    # wait, and `forward` would not run until a child exited.
    while True:
        try:
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            continue
