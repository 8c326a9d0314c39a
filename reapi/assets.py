"""The Remote Asset API's core: qualifiers, the asset index, and downloads into the CAS.

No gRPC here (reapi/asset_service.py unpacks requests and maps errors to status codes).

An asset is a URI with qualifiers, mapped to a blob (or a Directory) in the CAS of the
storage the caller's cluster and cache mode choose, per tenant, like every CAS blob. The
index (reapi.models.Asset) finds it again with one query and no network:

- **Keys.** `asset_key`: the SHA-256 of the kind, the URI, `checksum.sri` and
  `bazel.canonical_id`, and, when there is no checksum, the HTTP headers the request sends
  to that URI (content fetched with other credentials or a `Range` is another asset). With a
  checksum the checksum is the identity: any content that matches it is the asset, as in
  Bazel's own repository cache, so a rotated token still finds it. Each URI has its own key;
  a download records the URI that gave the content.
- **Checksums.** A request whose `checksum.sri` matches an asset stored under another URI
  (a mirror) with the same `bazel.canonical_id` is served that asset: by the content's
  SHA-256 for a sha256 checksum, by the checksum itself for sha384/sha512. Every download is
  verified against the checksum before it is stored (W3C SRI: the strongest algorithm given,
  any of its values); a mismatch is ABORTED and stores nothing. A push with a checksum is
  verified too.
- **Hits** need `cas:read`; a download needs `cas:write` (a read-only token cannot make the
  server fetch). A hit is an entry whose content is still in the CAS, not expired (Push's
  `expire_at`) and not older than `oldest_content_accepted`; an entry whose blob was evicted
  is a miss and is downloaded again.
- **Downloads** (reapi.http_fetch, through reapi.egress's policy) run on a few threads of
  their own per process (REAPI_ASSET_DOWNLOADS), one per distinct request at a time: a second
  identical request joins the first. A download outlives a client that gave up (its deadline
  is its own: the request's timeout, at most REAPI_ASSET_TIMEOUT_SECONDS), so a retry finds it
  done. The URIs are tried in order, a transient failure (no connection, 5xx) once more; the
  body streams into a spool file (never whole in memory), hashed as it arrives, admitted
  against the tenant's quota as it grows, capped at REAPI_ASSET_MAX_BYTES, then moved into
  the CAS like a ByteStream upload.
"""

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from reapi import clusters, db_threads, egress, http_fetch, metrics, uploads, usage
from reapi.auth import Principal
from reapi.digests import Digest
from reapi.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    ReapiError,
    ResourceExhausted,
    Unavailable,
)
from reapi.models import Asset
from reapi.once import Once

log = logging.getLogger(__name__)

CHECKSUM = "checksum.sri"
CANONICAL_ID = "bazel.canonical_id"
AUTH_HEADERS = "bazel.auth_headers"  # Bazel's own: JSON {url: {header: value}}
HEADER = "http_header:"  # http_header:NAME, for every URI
HEADER_URL = "http_header_url:"  # http_header_url:INDEX:NAME, for the URI at INDEX
SUPPORTED = (CHECKSUM, CANONICAL_ID, f"{HEADER}NAME", f"{HEADER_URL}INDEX:NAME", AUTH_HEADERS)

MAX_URIS = 64
MAX_URI_CHARS = 4096
MAX_SRI_CHARS = 200
MAX_HEADER_VALUE = 8192
# Set by this server, or meaningless or harmful when a client sets them.
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "keep-alive",
        "expect",
        "accept-encoding",
        "proxy-authorization",
        "proxy-connection",
    }
)
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
SRI_ALGORITHMS = {"sha256": 32, "sha384": 48, "sha512": 64}  # weakest first


# --- requests -------------------------------------------------------------------------------


class ChecksumMismatch(Aborted):
    """The origin's content is not what the checksum names."""


class UnsupportedQualifiers(InvalidArgument):
    """Qualifiers this server does not understand; sent with a google.rpc.BadRequest detail."""

    def __init__(self, names: list[str]) -> None:
        shown = ", ".join(repr(n[:100]) for n in names)
        super().__init__(
            f"qualifier{'s' if len(names) > 1 else ''} {shown} not supported "
            f"(this server understands {', '.join(SUPPORTED)})"
        )
        self.names = names


@dataclass(frozen=True, slots=True)
class Sri:
    """A checksum.sri value: (algorithm, digest) pairs, and its text as stored and compared."""

    text: str
    entries: tuple[tuple[str, bytes], ...]

    @property
    def algorithm(self) -> str:
        """The strongest algorithm given: only its values count (W3C SRI)."""
        return max((a for a, _ in self.entries), key=list(SRI_ALGORITHMS).index)

    @property
    def sha256_hex(self) -> str | None:
        """The content's SHA-256 (its CAS hash) when that is what the checksum pins."""
        wanted = [d for a, d in self.entries if a == self.algorithm]
        return wanted[0].hex() if self.algorithm == "sha256" and len(wanted) == 1 else None

    def matches(self, found: dict[str, bytes]) -> bool:
        return any(found.get(a) == d for a, d in self.entries if a == self.algorithm)


def parse_sri(value: str) -> Sri:
    if len(value) > MAX_SRI_CHARS:
        raise InvalidArgument(f"{CHECKSUM} is longer than {MAX_SRI_CHARS} characters")
    entries = []
    for token in value.split():
        algorithm, _, rest = token.partition("-")
        encoded = rest.split("?", 1)[0]  # W3C SRI: options after '?' are ignored
        size = SRI_ALGORITHMS.get(algorithm.lower())
        if size is None:
            raise InvalidArgument(
                f"{CHECKSUM} {token[:100]!r}: algorithm {algorithm[:20]!r} is not one of "
                f"{', '.join(SRI_ALGORITHMS)}"
            )
        try:
            decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) != size:
            raise InvalidArgument(f"{CHECKSUM} {token[:100]!r} is not a base64 {algorithm.lower()} digest")
        entries.append((algorithm.lower(), decoded))
    if not entries:
        raise InvalidArgument(f"{CHECKSUM} is empty")
    text = " ".join(f"{a}-{base64.b64encode(d).decode()}" for a, d in entries)
    return Sri(text, tuple(entries))


def sri_of(algorithm: str, digest: bytes) -> str:
    return f"{algorithm}-{base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class AssetRequest:
    """A Fetch or Push request's URIs and qualifiers, checked."""

    kind: str  # Asset.Kind
    uris: tuple[str, ...]
    sri: Sri | None = None
    canonical_id: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # http_header:*, lowercase names
    url_headers: dict[int, dict[str, str]] = field(default_factory=dict)  # http_header_url:*
    auth_headers: dict[str, dict[str, str]] = field(default_factory=dict)  # bazel.auth_headers

    def headers_for(self, index: int) -> dict[str, str]:
        """What goes with the URI at `index`: per-URL headers over the global ones."""
        return {
            **self.headers,
            **self.auth_headers.get(self.uris[index], {}),
            **self.url_headers.get(index, {}),
        }

    def key(self, index: int) -> str:
        return asset_key(self, index)


def asset_key(request: AssetRequest, index: int) -> str:
    parts: dict[str, Any] = {
        "kind": request.kind,
        "uri": request.uris[index],
        CHECKSUM: request.sri.text if request.sri else "",
        CANONICAL_ID: request.canonical_id,
    }
    if request.sri is None:
        parts["headers"] = sorted(request.headers_for(index).items())
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _header(name: str, value: str, qualifier: str) -> tuple[str, str]:
    if not HEADER_NAME.fullmatch(name):
        raise InvalidArgument(f"qualifier {qualifier[:100]!r}: {name[:100]!r} is not an HTTP header name")
    if name.lower() in FORBIDDEN_HEADERS:
        raise InvalidArgument(f"qualifier {qualifier[:100]!r}: the {name} header is the server's to set")
    if len(value) > MAX_HEADER_VALUE or any(c in value for c in "\r\n\0"):
        raise InvalidArgument(
            f"qualifier {qualifier[:100]!r}: the value is longer than {MAX_HEADER_VALUE} "
            "characters or holds a line break"
        )
    return name.lower(), value


def parse_request(kind: str, uris: Iterable[str], qualifiers: Iterable[tuple[str, str]]) -> AssetRequest:
    uris = tuple(uris)
    if not uris:
        raise InvalidArgument("at least one URI is required")
    if len(uris) > MAX_URIS:
        raise InvalidArgument(f"{len(uris)} URIs; at most {MAX_URIS}")
    for uri in uris:
        if not uri or len(uri) > MAX_URI_CHARS or any(c in uri for c in "\r\n\0"):
            raise InvalidArgument(
                f"URI {uri[:100]!r} is empty, longer than {MAX_URI_CHARS} characters or holds a line break"
            )
    seen: set[str] = set()
    unsupported: list[str] = []
    sri: Sri | None = None
    canonical_id = ""
    headers: dict[str, str] = {}
    url_headers: dict[int, dict[str, str]] = {}
    auth_headers: dict[str, dict[str, str]] = {}
    for name, value in qualifiers:
        if name in seen:
            raise InvalidArgument(f"qualifier {name[:100]!r} is given twice")
        seen.add(name)
        if name == CHECKSUM:
            sri = parse_sri(value)
        elif name == CANONICAL_ID:
            if len(value) > MAX_URI_CHARS * 4:
                raise InvalidArgument(f"{CANONICAL_ID} is longer than {MAX_URI_CHARS * 4} characters")
            canonical_id = value
        elif name.startswith(HEADER):
            header, text = _header(name[len(HEADER) :], value, name)
            headers[header] = text
        elif name.startswith(HEADER_URL):
            index_text, _, header_name = name[len(HEADER_URL) :].partition(":")
            if not index_text.isdigit() or int(index_text) >= len(uris):
                raise InvalidArgument(
                    f"qualifier {name[:100]!r}: {index_text[:20]!r} is not the index of one of the "
                    f"{len(uris)} URIs"
                )
            header, text = _header(header_name, value, name)
            url_headers.setdefault(int(index_text), {})[header] = text
        elif name == AUTH_HEADERS:
            auth_headers = _auth_headers(value)
        else:
            unsupported.append(name)
    if unsupported:
        raise UnsupportedQualifiers(unsupported)
    return AssetRequest(kind, uris, sri, canonical_id, headers, url_headers, auth_headers)


def _auth_headers(value: str) -> dict[str, dict[str, str]]:
    try:
        found = json.loads(value)
    except ValueError:
        found = None
    if not isinstance(found, dict) or not all(
        isinstance(u, str) and isinstance(h, dict) and all(isinstance(v, str) for v in h.values())
        for u, h in found.items()
    ):
        raise InvalidArgument(f"{AUTH_HEADERS} is not a JSON object of URL to {{header: value}}")
    return {
        url: dict(_header(name, v, AUTH_HEADERS) for name, v in headers.items())
        for url, headers in found.items()
    }


# --- the index ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    uri: str
    digest: Digest
    asset_id: int | None = None
    sri: str = ""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, and where their CAS is: the principal's tenant and the call's backend."""

    tenant: str
    tenant_id: int
    cluster: str
    backend: clusters.Backend
    who: Principal  # for the usage counters (per member and token)
    token_id: int | None = None
    token_prefix: str = ""

    @property
    def storage(self) -> str:
        return self.backend.alias


_ROW = ("id", "key", "uri", "sri", "canonical_id", "digest_hash", "digest_size", "fetched_at", "expires_at")


def lookup(caller: Caller, request: AssetRequest, oldest: datetime | None = None) -> Found | None:
    """The cached asset for `request`, its content present in the CAS; None on a miss."""
    db_threads.checked_connection()
    keys = [request.key(i) for i in range(len(request.uris))]
    rows = Asset.objects.filter(storage=caller.storage, tenant_id=caller.tenant_id, key__in=keys)
    by_key = {row[1]: row for row in rows.values_list(*_ROW)}
    # FetchBlobResponse.uri: the request's URI that gave the content, as the client wrote it.
    candidates = [(request.uris[i], by_key[k]) for i, k in enumerate(keys) if k in by_key]
    found = _first_usable(caller, candidates, oldest)
    if found is None and request.sri is not None:
        # Another URI with the same checksum and canonical id: a mirror of the same content.
        same = Asset.objects.filter(
            storage=caller.storage,
            tenant_id=caller.tenant_id,
            kind=request.kind,
            canonical_id=request.canonical_id,
        )
        # A blob's digest is its content's SHA-256: any blob with it matches a sha256 checksum.
        sha256 = request.sri.sha256_hex if request.kind == Asset.Kind.BLOB else None
        same = same.filter(digest_hash=sha256) if sha256 else same.filter(sri=request.sri.text)
        others = [
            (request.uris[0], row)
            for row in same.order_by("-fetched_at").values_list(*_ROW)[:20]
            if row[1] not in by_key
        ]
        found = _first_usable(caller, others, oldest)
    if found is not None and found.asset_id is not None:
        hits.add(found.asset_id)
    return found


def _first_usable(
    caller: Caller, rows: list[tuple[str, tuple[Any, ...]]], oldest: datetime | None
) -> Found | None:
    now = timezone.now()
    for uri, (asset_id, _key, _uri, sri, _cid, digest_hash, digest_size, fetched_at, expires_at) in rows:
        if expires_at is not None and expires_at <= now:
            continue
        if oldest is not None and fetched_at < oldest:
            continue
        digest = Digest(digest_hash, digest_size)
        if not caller.backend.cas.contains(caller.tenant, digest):
            continue  # evicted: a miss, downloaded again
        return Found(uri, digest, asset_id, sri)
    return None


def record(
    caller: Caller,
    request: AssetRequest,
    index: int,
    digest: Digest,
    origin: str,
    sri: str,
    expires_at: datetime | None = None,
) -> int:
    """Map the URI at `index` (with the request's qualifiers) to `digest`; returns the row id."""
    db_threads.checked_connection()
    now = timezone.now()
    values = {
        "kind": request.kind,
        "origin": origin,
        "uri": egress.redact(request.uris[index]),
        "sri": sri[:200],
        "canonical_id": request.canonical_id,
        "digest_hash": digest.hash,
        "digest_size": digest.size,
        "fetched_at": now,
        "expires_at": expires_at,
        "token_id": caller.token_id,
        "token_prefix": caller.token_prefix,
    }
    where = {"storage": caller.storage, "tenant_id": caller.tenant_id, "key": request.key(index)}
    for _attempt in range(2):
        with transaction.atomic():
            updated = Asset.objects.filter(**where).update(**values)
            if updated:
                return Asset.objects.filter(**where).values_list("id", flat=True).get()
        try:
            with transaction.atomic():
                return Asset.objects.create(**where, **values, first_fetched_at=now).id
        except IntegrityError:
            continue  # another process recorded it first: update that row
    raise Unavailable("the asset index changed under this request; retry")


class Hits:
    """Hits and last use per asset row, counted in memory (a dict under a lock, no database
    write per call) and added to the rows by the usage flusher (reapi/usage.py)."""

    def __init__(self) -> None:
        self._counts: dict[int, list[float]] = {}
        self._lock = threading.Lock()

    def add(self, asset_id: int) -> None:
        now = time.time()
        with self._lock:
            row = self._counts.get(asset_id)
            if row is None:
                self._counts[asset_id] = [1, now]
            else:
                row[0] += 1
                row[1] = now

    def flush(self) -> int:
        with self._lock:
            taken, self._counts = self._counts, {}
        if not taken:
            return 0
        db_threads.checked_connection()
        failed = {}
        for asset_id, (count, last) in taken.items():
            try:
                Asset.objects.filter(pk=asset_id).update(
                    hits=F("hits") + int(count),
                    last_used_at=datetime.fromtimestamp(last, tz=UTC),
                )
            except DatabaseError:
                log.warning("asset hit counts not saved; kept for the next flush", exc_info=True)
                failed[asset_id] = [count, last]
        if failed:
            with self._lock:
                for asset_id, (count, last) in failed.items():
                    row = self._counts.setdefault(asset_id, [0, last])
                    row[0] += count
                    row[1] = max(row[1], last)
        return len(taken) - len(failed)


hits = Hits()
usage.on_flush(hits.flush)


# --- downloads ------------------------------------------------------------------------------

T = TypeVar("T")


class Downloads:
    """A few daemon threads running downloads, one flight per distinct request: a request
    that is already downloading joins it. Daemon threads: a stopping server does not wait
    for a download (its spool file expires like an abandoned upload's)."""

    def __init__(self, threads: int, max_flights: int) -> None:
        self.threads = threads
        self.max_flights = max_flights
        self._flights: dict[str, Future[Any]] = {}
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0

    def start(self, key: str, job: Callable[[], T]) -> "Future[T]":
        with self._lock:
            running = self._flights.get(key)
            if running is not None:
                return running
            if len(self._flights) >= self.max_flights:
                raise Unavailable(
                    f"this server is busy with {len(self._flights)} asset downloads; retry shortly"
                )
            future: Future[T] = Future()
            self._flights[key] = future
            if self._started < self.threads:
                self._started += 1
                threading.Thread(
                    target=self._work, name=f"asset-download-{self._started}", daemon=True
                ).start()
        future.add_done_callback(lambda _f: self._land(key))
        self._queue.put((future, job))
        return future

    def _land(self, key: str) -> None:
        with self._lock:
            self._flights.pop(key, None)

    def _work(self) -> None:
        while True:
            future, job = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)


def _make_downloads() -> Downloads:
    threads = settings.REAPI_ASSET_DOWNLOADS
    return Downloads(threads, max_flights=threads * 16)


downloads = Once(_make_downloads)


def policy() -> egress.Policy:
    return egress.Policy(settings.REAPI_ASSET_ALLOWED_PREFIXES)


# Failures that come out the same however often they are asked for: a client's retries (Bazel
# retries ABORTED and RESOURCE_EXHAUSTED five times) get the same answer for this long without
# another download of what was refused.
SETTLED_FAILURES = (ChecksumMismatch, http_fetch.TooLarge)
FAILURE_MEMORY_SECONDS = 60.0
_failures: dict[str, tuple[float, ReapiError]] = {}
_failures_lock = threading.Lock()


def fetch(caller: Caller, request: AssetRequest, timeout: float | None) -> "Future[Found]":
    """Start (or join) the download of `request` into the caller's CAS."""
    flight = hashlib.sha256(
        json.dumps(
            [caller.storage, caller.tenant, [request.key(i) for i in range(len(request.uris))]]
        ).encode()
    ).hexdigest()
    now = time.monotonic()
    with _failures_lock:
        failed = _failures.get(flight)
        if failed is not None and failed[0] <= now:
            del _failures[flight]
            failed = None
    if failed is not None:
        settled: Future[Found] = Future()
        settled.set_exception(
            type(failed[1])(f"{failed[1].message} (the same a moment ago: not fetched again)")
        )
        return settled
    limit = float(settings.REAPI_ASSET_TIMEOUT_SECONDS)
    seconds = min(timeout, limit) if timeout else limit

    def job() -> Found:
        try:
            return _download(caller, request, seconds)
        except SETTLED_FAILURES as exc:
            with _failures_lock:
                if len(_failures) > 10_000:
                    _failures.clear()
                _failures[flight] = (time.monotonic() + FAILURE_MEMORY_SECONDS, exc)
            raise

    return downloads().start(flight, job)


RETRY_PAUSE = 0.5  # seconds before the second try of a URL that failed transiently


def _download(caller: Caller, request: AssetRequest, seconds: float) -> Found:
    deadline = time.monotonic() + seconds
    the_policy = policy()
    failures: list[ReapiError] = []
    for index, uri in enumerate(request.uris):
        for attempt in (1, 2):
            started = time.monotonic()
            try:
                found = _download_one(caller, request, index, the_policy, deadline)
            except http_fetch.Transient as exc:
                if attempt == 1 and time.monotonic() + RETRY_PAUSE < deadline:
                    time.sleep(RETRY_PAUSE)
                    continue
                failures.append(exc)
            except ReapiError as exc:
                failures.append(exc)
                if exc.code in ("DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"):
                    # The time, the tenant's quota or the size cap: no other URI does better.
                    return _failed(caller, failures)
            else:
                log.info(
                    "asset %s for %s: %d bytes in %.2f s from %s",
                    found.digest,
                    caller.tenant,
                    found.digest.size,
                    time.monotonic() - started,
                    egress.redact(uri)[:300],
                )
                return found
            break
    return _failed(caller, failures)


def _failed(caller: Caller, failures: list[ReapiError]) -> NoReturn:
    for exc in failures:
        log.warning("asset download for %s failed: %s", caller.tenant, exc.message)
    raise _combined(failures)


def _combined(failures: list[ReapiError]) -> ReapiError:
    if len(failures) == 1:
        return failures[0]
    first = failures[0]
    kind: type[ReapiError] = type(first)
    if issubclass(kind, http_fetch.Transient):
        kind = Unavailable
    final = ("NOT_FOUND", "PERMISSION_DENIED", "INVALID_ARGUMENT", "FAILED_PRECONDITION")
    if issubclass(kind, SETTLED_FAILURES) and not all(
        isinstance(f, SETTLED_FAILURES) or f.code in final for f in failures
    ):
        kind = Aborted if issubclass(kind, Aborted) else ResourceExhausted  # another URI may do

    message = f"no URI gave the asset: {'; '.join(f.message for f in failures)}"
    if isinstance(first, FailedPrecondition):
        return FailedPrecondition(message)
    return kind(message)


def _download_one(
    caller: Caller, request: AssetRequest, index: int, the_policy: egress.Policy, deadline: float
) -> Found:
    cas = caller.backend.cas
    spool = Path(cas.spool) / "assets"
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / f"{uuid.uuid4().hex}.part"
    sri = request.sri
    hashers = {"sha256": hashlib.sha256()}
    if sri is not None and sri.algorithm not in hashers:
        hashers[sri.algorithm] = hashlib.new(sri.algorithm)
    written = 0
    f = uploads.start(path)  # locked, so expiry never takes it from under a download
    try:

        def write(chunk: bytes) -> None:
            nonlocal written
            cas.quota.admit(caller.tenant, len(chunk))  # RESOURCE_EXHAUSTED past the hard limit
            written += len(chunk)
            f.write(chunk)
            for h in hashers.values():
                h.update(chunk)

        http_fetch.download(
            request.uris[index],
            request.headers_for(index),
            lambda url: request.auth_headers.get(url, {}),
            the_policy,
            deadline,
            settings.REAPI_ASSET_MAX_BYTES,
            write,
        )
        found = {a: h.digest() for a, h in hashers.items()}
        shown = egress.redact(request.uris[index])[:300]
        if sri is not None and not sri.matches(found):
            raise ChecksumMismatch(
                f"{shown}: the content does not match {CHECKSUM} "
                f"(it is {sri_of(sri.algorithm, found[sri.algorithm])}, {written} bytes); nothing was stored"
            )
        digest = Digest(found["sha256"].hex(), written)
        f.flush()
        os.fsync(f.fileno())
        if cas.contains(caller.tenant, digest):
            path.unlink(missing_ok=True)
        else:
            cas.commit_file(caller.tenant, digest, path)
            usage.add(caller.who, caller.cluster, usage.STORED, digest.size)
            metrics.cas(caller.cluster, "write", digest.size)
    finally:
        f.close()
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    text = sri.text if sri is not None else sri_of("sha256", found["sha256"])
    asset_id = record(caller, request, index, digest, Asset.Origin.FETCHED, text)
    return Found(request.uris[index], digest, asset_id, text)


# --- pushes ---------------------------------------------------------------------------------


def push(caller: Caller, request: AssetRequest, digest: Digest, expires_at: datetime | None) -> None:
    """Map every URI of `request` to `digest`, already in the CAS (a Directory for kind
    directory). A checksum given is verified against the content."""
    cas = caller.backend.cas
    if request.kind == Asset.Kind.DIRECTORY:
        if cas.directory(caller.tenant, digest) is None:
            raise FailedPrecondition(
                f"directory {digest} is not in the CAS: upload it first",
                missing=((digest.hash, digest.size),),
            )
    elif not cas.contains(caller.tenant, digest):
        raise FailedPrecondition(
            f"blob {digest} is not in the CAS: upload it first", missing=((digest.hash, digest.size),)
        )
    sri = request.sri
    if sri is not None:
        if sri.sha256_hex is not None:
            ok = sri.sha256_hex == digest.hash
            actual = sri_of("sha256", bytes.fromhex(digest.hash))
        else:
            h = hashlib.new(sri.algorithm)
            for chunk in cas.read(caller.tenant, digest, 0, 0):
                h.update(chunk)
            ok = sri.matches({sri.algorithm: h.digest()})
            actual = sri_of(sri.algorithm, h.digest())
        if not ok:
            raise InvalidArgument(
                f"{CHECKSUM} does not match {digest} (it is {actual}); nothing was recorded"
            )
    text = sri.text if sri is not None else sri_of("sha256", bytes.fromhex(digest.hash))
    for index in range(len(request.uris)):
        record(caller, request, index, digest, Asset.Origin.PUSHED, text, expires_at)
