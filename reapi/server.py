"""Builds and runs one gRPC server process for a cluster."""

import gc
import logging
import os
import signal
import sys
import threading
from concurrent import futures

import grpc
from django.conf import settings
from django.core.files.storage import storages
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from reapi import metrics, metrics_http, request_log, usage
from reapi.ac_service import ActionCacheService
from reapi.admission import AuthInterceptor
from reapi.asset_service import FetchService, PushService
from reapi.bytestream_service import ByteStreamService
from reapi.call_pools import Pools
from reapi.capabilities_service import CapabilitiesService
from reapi.cas_service import CasService
from reapi.execution_metrics import ExecutionCollector
from reapi.execution_service import ExecutionService
from reapi.filestorage import BlobFileSystemStorage
from reapi.gen.build.bazel.remote.asset.v1 import remote_asset_pb2_grpc as ra_grpc
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from reapi.gen.google.bytestream import bytestream_pb2_grpc as bs_grpc
from reapi.gen.google.longrunning import operations_pb2_grpc as ops_grpc
from reapi.limits import Limiter
from reapi.operations_service import OperationsService
from reapi.readiness import Readiness

log = logging.getLogger(__name__)

SERVICES = (
    "build.bazel.remote.execution.v2.Capabilities",
    "build.bazel.remote.execution.v2.ContentAddressableStorage",
    "build.bazel.remote.execution.v2.ActionCache",
    "google.bytestream.ByteStream",
    "build.bazel.remote.execution.v2.Execution",
    "google.longrunning.Operations",
    "build.bazel.remote.asset.v1.Fetch",
    "build.bazel.remote.asset.v1.Push",
)
# Refused calls waiting for one of the refusal threads before grpcio refuses on its own.
REFUSALS_IN_FLIGHT = 4096


def build(cluster: str, listen: str, threads: int = 32) -> tuple[grpc.Server, int, health.HealthServicer]:
    if cluster not in settings.CLUSTERS:
        raise ValueError(f"unknown cluster {cluster!r} (choose {', '.join(settings.CLUSTERS)})")
    request_log.JSON = settings.REAPI_LOG_FORMAT == "json"
    if settings.REAPI_REQUEST_LOG == "errors":
        request_log.log.setLevel(logging.WARNING)
    options = [
        # Batches are advertised below this limit (clusters.max_batch_bytes); the slack
        # covers digests and framing around the data.
        ("grpc.max_receive_message_length", settings.REAPI_MAX_MESSAGE_BYTES + 1024 * 1024),
        ("grpc.max_send_message_length", -1),
        # Several `reapi serve` processes may share one port (--processes).
        ("grpc.so_reuseport", 1),
    ]
    waiting = settings.REAPI_WAITING_THREADS
    queued = settings.REAPI_MAX_QUEUED
    pools = Pools(
        main=futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"reapi-{cluster}"),
        refusals=futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"reapi-{cluster}-refusals"),
        health=futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"reapi-{cluster}-health"),
        waiting=futures.ThreadPoolExecutor(
            max_workers=waiting, thread_name_prefix=f"reapi-{cluster}-waiting"
        ),
        quick=_quick_pool(cluster),
    )
    limiter = Limiter(settings.REAPI_TOKEN_RATE, settings.REAPI_TOKEN_STREAMS)
    held = [p for p in (pools.main, pools.health, pools.waiting, pools.quick) if p is not None]
    server = grpc.server(
        pools.main,
        interceptors=[AuthInterceptor(pools, limiter, max_queued=queued)],
        options=options,
        # The interceptor sheds calls with UNAVAILABLE once a pool's queue holds REAPI_MAX_QUEUED,
        # so this is only a last bound, on refusals piling up faster than their two threads
        # answer them; grpcio answers past it with RESOURCE_EXHAUSTED, health checks included.
        maximum_concurrent_rpcs=sum(p._max_workers + queued for p in held) + REFUSALS_IN_FLIGHT,
    )
    re_grpc.add_CapabilitiesServicer_to_server(CapabilitiesService(cluster, exec_enabled=True), server)
    re_grpc.add_ContentAddressableStorageServicer_to_server(CasService(cluster), server)
    re_grpc.add_ActionCacheServicer_to_server(ActionCacheService(cluster), server)
    bs_grpc.add_ByteStreamServicer_to_server(ByteStreamService(cluster), server)
    re_grpc.add_ExecutionServicer_to_server(ExecutionService(cluster), server)
    ops_grpc.add_OperationsServicer_to_server(OperationsService(cluster), server)
    ra_grpc.add_FetchServicer_to_server(FetchService(cluster), server)
    ra_grpc.add_PushServicer_to_server(PushService(cluster), server)
    health_servicer = health.HealthServicer()
    for name in ("", *SERVICES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = _bind(server, listen)
    return server, port, health_servicer


def set_health(health_servicer: health.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICES):
        health_servicer.set(name, status)


def _cheap_log_records() -> None:
    """Log records without what no handler of ours prints: the request log writes a line per
    call, and finding the caller's frame, thread and process names cost half of each line
    (~10 of ~20 µs). Setting logging._srcfile to None is the switch logging documents for the
    first."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def _quick_pool(cluster: str) -> futures.ThreadPoolExecutor | None:
    """A few threads of their own for short reads of local storage (methods.QUICK_METHODS),
    when every store this server can use is a local filesystem: against S3 those calls wait
    on the network and want the main pool's many threads."""
    if not all(isinstance(storages[f"reapi-{c}"], BlobFileSystemStorage) for c in settings.CLUSTERS):
        return None
    workers = max(4, 2 * (os.cpu_count() or 1))
    return futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"reapi-{cluster}-quick")


def _bind(server: grpc.Server, listen: str) -> int:
    if settings.REAPI_TLS_CERT:
        with open(settings.REAPI_TLS_CERT, "rb") as f:
            cert = f.read()
        with open(settings.REAPI_TLS_KEY, "rb") as f:
            key = f.read()
        creds = grpc.ssl_server_credentials([(key, cert)])
        port = server.add_secure_port(listen, creds)
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return port


def serve(cluster: str, listen: str, threads: int = 32, metrics_listen: str = "") -> None:
    server, _port, health_servicer = build(cluster, listen, threads)
    _cheap_log_records()
    batches = request_log.write_in_batches(sys.stderr)
    readiness = Readiness(cluster, lambda serving: set_health(health_servicer, serving))
    multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    metrics.ENABLED = bool(metrics_listen or multiprocess)
    # A scrape of this process's own listener folds first; only the files a supervisor reads
    # (--processes N) must be kept current without being asked.
    folding = metrics.fold_every(0.5) if multiprocess else None
    if metrics_listen:
        metrics_http.start(metrics_listen, readiness.ready, (ExecutionCollector(cluster),))
    # Everything loaded so far (Django, protobuf, gRPC) lives as long as the process: keep it
    # out of the collector's full passes, which otherwise walk it all and stall a call by
    # ~30 ms every few seconds under load (FindMissingBlobs allocates ~30,000 objects a call).
    gc.freeze()
    server.start()
    readiness.start()
    flusher = usage.start_flusher()  # usage counters reach the database every few seconds
    scheme = "grpcs" if settings.REAPI_TLS_CERT else "grpc"
    log.info("REAPI %s cluster serving on %s://%s (pid %d)", cluster, scheme, listen, os.getpid())
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Woken every second: a signal taken by another thread (the metrics listener's, the
    # readiness check's) would not interrupt an endless wait, and its handler would not run.
    while not stop.wait(1.0):
        pass
    # Draining: health checks and /readyz say so at once, and for REAPI_DRAIN_SECONDS the
    # server still takes calls, while load balancers move clients away; then it stops.
    readiness.drain()
    readiness.stop()
    if settings.REAPI_DRAIN_SECONDS:
        log.info("draining for %d s before stopping", settings.REAPI_DRAIN_SECONDS)
        threading.Event().wait(settings.REAPI_DRAIN_SECONDS)
    server.stop(grace=5).wait()
    if folding is not None:
        folding.set()
    flusher.stop()
    batches.close()
