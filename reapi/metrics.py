"""Prometheus metrics of a server process, under the names the ecosystem's boards know.

gRPC calls follow the grpc-prometheus convention (grpc_server_started_total,
grpc_server_handled_total, grpc_server_handling_seconds); the cache's own are reapi_*. Labels
are bounded: a method, a code, a cluster, a direction, a reason; never a token, a user or a
digest. With PROMETHEUS_MULTIPROC_DIR set (`reapi serve --processes N` sets it for its
children) prometheus_client keeps every value in a file per process, and one scrape of the
supervisor adds them up.

The per-call path takes no lock: a call adds to counts of its own thread (reapi.tally), and a
thread of the server's folds what was added into the metrics every half second, and before a scrape
of this process (fold). Each prometheus_client increment takes a lock, and a call made six of
them: with the GIL handed between the serving threads, those locks cost a GetActionResult
~45 k of its ~650 k instructions (callgrind); counted in tallies, all metrics cost ~25 k.
"""

import bisect
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from django.conf import settings
from prometheus_client import Counter, Histogram

from reapi import request_log
from reapi.tally import Tally

# Seconds: a cache hit is a millisecond, a remote action may be an hour.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
EXECUTION_BUCKETS = (0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
GRPC = ("grpc_type", "grpc_service", "grpc_method")
# REAPI_METRICS_TENANT_LABELS=1: the cache's counters carry the tenant's slug too (one series
# per tenant: for a few large tenants, not for thousands).
TENANT_LABELS = settings.REAPI_METRICS_TENANT_LABELS
CACHE = ("cluster", "tenant") if TENANT_LABELS else ("cluster",)

STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", GRPC)
HANDLED = Counter("grpc_server_handled_total", "RPCs completed on the server, by code.", (*GRPC, "grpc_code"))
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time from a call's start to its answer.",
    GRPC,
    buckets=LATENCY_BUCKETS,
)
AC_REQUESTS = Counter(
    "reapi_action_cache_requests_total", "GetActionResult answers, hit or miss.", (*CACHE, "result")
)
CAS_BYTES = Counter(
    "reapi_cas_bytes_total", "CAS bytes served (read) and stored (write).", (*CACHE, "direction")
)
CAS_BLOBS = Counter(
    "reapi_cas_blobs_total", "CAS blobs served (read) and stored (write).", (*CACHE, "direction")
)
FIND_MISSING = Counter(
    "reapi_find_missing_digests_total",
    "Digests asked about by FindMissingBlobs, present or missing.",
    (*CACHE, "result"),
)
EXECUTION = Histogram(
    "reapi_execution_duration_seconds",
    "Remote actions: time queued before a worker took them, and time running.",
    ("cluster", "pool", "stage"),
    buckets=EXECUTION_BUCKETS,
)
STORAGE = Histogram(
    "reapi_storage_operation_seconds",
    "Storage operations by backend (file, s3) and operation.",
    ("backend", "op"),
    buckets=LATENCY_BUCKETS,
)
AUTH_FAILURES = Counter("reapi_auth_failures_total", "Calls refused before they ran, by reason.", ("reason",))
RATE_LIMITED = Counter("reapi_rate_limited_total", "Calls refused for a credential's limits.", ("reason",))


# Whether this process counts at all: only where a scrape can read the counts (a listener of
# its own, or the supervisor's of `reapi serve --processes N`, through PROMETHEUS_MULTIPROC_DIR).
# Without one, every increment is work nobody sees. Set by reapi.server.serve.
ENABLED = True


class _Folder:
    """Hands what the serving threads added to _TALLY (keys: a counter child, with a count, or
    a histogram child, with a row of bucket counts and the sum) to prometheus_client: one
    increment per count, of what was added since the last fold."""

    def __init__(self) -> None:
        self._folded: dict[Hashable, Any] = {}
        self._lock = threading.Lock()  # one fold at a time (the folder's thread, a scrape)

    def fold(self, tally: Tally) -> None:
        with self._lock:
            totals = tally.totals()
            for key, total in totals.items():
                before = self._folded.get(key)
                if isinstance(total, list):  # a histogram child's row: see _observe
                    last = len(total) - 1
                    for index, now in enumerate(total):
                        added = now - (before[index] if before else 0)  # type: ignore[index]
                        if added:
                            # prometheus_client has no bulk observe: the child's own bucket
                            # and sum values, which observe() increments one by one.
                            (key._sum if index == last else key._buckets[index]).inc(added)  # type: ignore[attr-defined]
                    continue
                added = total - (before or 0)  # type: ignore[operator]
                if added:
                    key.inc(added)  # type: ignore[attr-defined]
            self._folded = totals


_TALLY = Tally()
_LOCAL = _TALLY.local
_FOLDER = _Folder()


def _observe(shard: dict[Hashable, Any], histogram: Any, value: float) -> None:
    """`histogram.observe(value)` into this thread's tally: the row of the histogram child holds
    a count per bucket, then the sum. The bucket is the first whose bound is not below the
    value, as prometheus_client chooses. A row, not a key per bucket: an observation builds no
    tuple and hashes nothing but the child."""
    row = shard.get(histogram)
    if row is None:
        row = shard[histogram] = _row(histogram)
    row[bisect.bisect_left(histogram._upper_bounds, value)] += 1
    row[-1] += value


def _row(histogram: Any) -> list[float]:
    return [0] * len(histogram._upper_bounds) + [0.0]


class _Tallied:
    """A counter child whose inc() goes to the tally."""

    __slots__ = ("child",)

    def __init__(self, child: Any) -> None:
        self.child = child

    def inc(self, amount: float = 1) -> None:
        # Tally.add inlined: two calls fewer on every RPC.
        shard = getattr(_LOCAL, "shard", None) or _TALLY.shard()
        shard[self.child] = shard.get(self.child, 0) + amount


def fold() -> None:
    """Hand the counts of every serving thread to prometheus_client (before a scrape)."""
    _FOLDER.fold(_TALLY)


def fold_every(seconds: float) -> threading.Event:
    """Fold from a thread of its own every `seconds` (with --processes N the supervisor's scrape
    reads the children's files, so they must be current without being asked); set the returned
    event to stop it, after a last fold."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(seconds):
            fold()
        fold()

    threading.Thread(target=run, name="metrics-fold", daemon=True).start()
    return stop


class Method:
    """The label children of one gRPC method, made on its first call."""

    __slots__ = ("bounds", "handled", "handling", "labels", "started")

    def __init__(self, full_method: str, grpc_type: str) -> None:
        service, _, name = full_method.lstrip("/").rpartition("/")
        self.labels = (grpc_type, service, name)
        self.started = _Tallied(STARTED.labels(*self.labels))
        self.handling = HANDLING.labels(*self.labels)
        self.bounds = self.handling._upper_bounds
        self.handled: dict[str, Any] = {}  # by the code's name

    def done(self, code: str, seconds: float) -> None:
        """One call ended with the status code named `code` (e.g. "OK") after `seconds`."""
        child = self.handled.get(code)
        if child is None:
            child = self.handled[code] = HANDLED.labels(*self.labels, code)
        shard = getattr(_LOCAL, "shard", None) or _TALLY.shard()
        shard[child] = shard.get(child, 0) + 1
        # _observe inlined: once every RPC.
        row = shard.get(self.handling)
        if row is None:
            row = shard[self.handling] = _row(self.handling)
        row[bisect.bisect_left(self.bounds, seconds)] += 1
        row[-1] += seconds


class Uncounted:
    """A Method that counts nothing (ENABLED off)."""

    class _Nothing:
        def inc(self, amount: float = 1) -> None:
            pass

    started = _Nothing()

    def done(self, code: str, seconds: float) -> None:
        pass


_methods: dict[tuple[str, str], Method] = {}
_UNCOUNTED = Uncounted()


def method(full_method: str, grpc_type: str) -> Method | Uncounted:
    if not ENABLED:
        return _UNCOUNTED
    found = _methods.get((full_method, grpc_type))
    if found is None:
        found = _methods[(full_method, grpc_type)] = Method(full_method, grpc_type)
    return found


def _children(metric: Any, wrap: Callable[[Any], Any] = lambda child: child) -> Callable[..., Any]:
    """A memo of `metric`'s children by label values (the hot paths call it per RPC), each
    `wrap`ped once."""
    made: dict[tuple[str, ...], Any] = {}

    def child(*values: str) -> Any:
        found = made.get(values)
        if found is None:
            found = made[values] = wrap(metric.labels(*values))
        return found

    return child


_ac = _children(AC_REQUESTS, _Tallied)
_bytes = _children(CAS_BYTES, _Tallied)
_blobs = _children(CAS_BLOBS, _Tallied)
_find = _children(FIND_MISSING, _Tallied)
_storage = _children(STORAGE)
_auth = _children(AUTH_FAILURES)
_limited = _children(RATE_LIMITED)


def _cache(cluster: str) -> tuple[str, ...]:
    return (cluster, request_log.tenant()) if TENANT_LABELS else (cluster,)


def action_cache(cluster: str, hit: bool) -> None:
    if not ENABLED:
        return
    result = "hit" if hit else "miss"
    if TENANT_LABELS:
        _ac(cluster, request_log.tenant(), result).inc()
        return
    # Once a GetActionResult: the child found in one lookup and added to without calls.
    child = _ac_children.get((cluster, result))
    if child is None:
        child = _ac_children[(cluster, result)] = _ac(cluster, result).child
    shard = getattr(_LOCAL, "shard", None) or _TALLY.shard()
    shard[child] = shard.get(child, 0) + 1


# (cluster, result) -> the prometheus child of reapi_action_cache_requests_total.
_ac_children: dict[tuple[str, str], Any] = {}


def cas(cluster: str, direction: str, nbytes: int, blobs: int = 1) -> None:
    """`direction`: "read" (served) or "write" (stored)."""
    if blobs and ENABLED:
        if TENANT_LABELS:
            labels = _cache(cluster)
            _bytes(*labels, direction).inc(nbytes)
            _blobs(*labels, direction).inc(blobs)
        else:
            # Once every CAS call: both children in one lookup, added to without calls.
            pair = _cas_pairs.get((cluster, direction))
            if pair is None:
                pair = _cas_pairs[(cluster, direction)] = (
                    _bytes(cluster, direction).child,
                    _blobs(cluster, direction).child,
                )
            shard = getattr(_LOCAL, "shard", None) or _TALLY.shard()
            shard[pair[0]] = shard.get(pair[0], 0) + nbytes
            shard[pair[1]] = shard.get(pair[1], 0) + blobs
    call = request_log.current.get()
    if call is not None:
        call.bytes += nbytes


# (cluster, direction) -> the prometheus children of reapi_cas_bytes_total and _blobs_total.
_cas_pairs: dict[tuple[str, str], tuple[Any, Any]] = {}


def find_missing(cluster: str, asked: int, missing: int) -> None:
    if not ENABLED:
        return
    labels = _cache(cluster)
    _find(*labels, "present").inc(asked - missing)
    _find(*labels, "missing").inc(missing)


def storage(backend: str, op: str, seconds: float) -> None:
    if ENABLED:
        # _storage's memo read here (its call only on a miss); the row is _observe's.
        histogram = _storage_children.get((backend, op))
        if histogram is None:
            histogram = _storage_children[(backend, op)] = _storage(backend, op)
        _observe(getattr(_LOCAL, "shard", None) or _TALLY.shard(), histogram, seconds)


# (backend, op) -> the prometheus child of reapi_storage_operation_seconds.
_storage_children: dict[tuple[str, str], Any] = {}


def auth_failure(reason: str) -> None:
    _auth(reason).inc()


def rate_limited(reason: str) -> None:
    _limited(reason).inc()


def execution(cluster: str, pool: str, stage: str, seconds: float) -> None:
    EXECUTION.labels(cluster, pool, stage).observe(seconds)


class timed:
    """`with metrics.timed("file", "read"):` observes the block's duration."""

    __slots__ = ("backend", "op", "start")

    def __init__(self, backend: str, op: str) -> None:
        self.backend, self.op = backend, op

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *_exc: object) -> None:
        storage(self.backend, self.op, time.perf_counter() - self.start)
