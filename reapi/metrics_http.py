"""The metrics listener of `reapi serve` (and `worker`): /metrics in the Prometheus text
format, /healthz (the process answers) and /readyz (it takes traffic: not draining, its
database and storage reachable) for load balancers and Kubernetes probes.

With PROMETHEUS_MULTIPROC_DIR set, /metrics adds up the files of every process that wrote
there (prometheus_client's multiprocess mode), so the supervisor of `--processes N` answers
for all its children in one scrape.
"""

import logging
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from reapi import metrics

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def registry(extra: tuple[Collector, ...] = ()) -> CollectorRegistry:
    if os.environ.get(MULTIPROC_ENV):
        chosen = CollectorRegistry()
        multiprocess.MultiProcessCollector(chosen)
    else:
        chosen = REGISTRY
    for collector in extra:
        chosen.register(collector)
    return chosen


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics listen address {listen!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def start(listen: str, ready: Callable[[], bool], extra: tuple[Collector, ...] = ()) -> ThreadingHTTPServer:
    """Serve the three paths on `listen` from a daemon thread; `ready` answers /readyz;
    `extra`: collectors read at scrape time, by this process alone."""
    metrics_registry = registry(extra)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                metrics.fold()  # what the serving threads counted since the last fold
                self._send(200, generate_latest(metrics_registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                if ready():
                    self._send(200, b"ready\n")
                else:
                    self._send(503, b"not ready\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes and probes every few seconds are not worth a line each

    host, port = split_listen(listen)
    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics, /healthz and /readyz on http://%s/", listen)
    return httpd
