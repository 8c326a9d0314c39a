"""Downloads for the Remote Asset API: one URL over HTTP(S), streamed, bounded, and never
anywhere the egress policy (reapi/egress.py) refuses.

requests does the HTTP; this module decides where it connects. Redirects are followed here,
one hop at a time, each hop checked like the first URL; the addresses each hop connects to
are the ones the policy checked, pinned in the connection (`_pinned`), so DNS is asked once
per hop and its answer cannot change between the check and the connection. TLS is still
verified against the URL's host name. No proxy or netrc from the environment is used.

The body is read raw (`Accept-Encoding: identity`, nothing inflated: what is stored is what
the origin sent, which is what a checksum names), a chunk at a time into the caller's `write`,
with a size cap and an overall deadline checked between chunks; a chunk read returns as soon
as any bytes arrive, so a trickling origin cannot hold a read past the deadline for long.
"""

import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from reapi.egress import Policy, redact
from reapi.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

MAX_REDIRECTS = 10
CONNECT_TIMEOUT = 10.0  # seconds, per connection attempt
READ_TIMEOUT = 60.0  # seconds without a byte from the origin
CHUNK = 1024 * 1024
USER_AGENT = f"reapi-remote-asset/1 python-requests/{requests.__version__}"
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Transient(Unavailable):
    """A failure worth one more try of the same URL: no connection, a reset, a 5xx or 429."""


class TooLarge(ResourceExhausted):
    """Over the size cap: the same answer however often it is asked."""


def _pinned(base: type[HTTPConnection], addresses: tuple[str, ...]) -> type[HTTPConnection]:
    """`base` connecting only to `addresses` (checked by the policy), whatever DNS says now."""

    def _new_conn(self: HTTPConnection) -> socket.socket:
        last: OSError | None = None
        for address in addresses:
            try:
                return urllib3_connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"connection to {self.host} ({address}) timed out") from exc
            except OSError as exc:
                last = exc
        raise NewConnectionError(self, f"cannot connect to {self.host}: {last}")

    return type(f"Pinned{base.__name__}", (base,), {"_new_conn": _new_conn})


class _PinnedAdapter(HTTPAdapter):
    def __init__(self, addresses: list[str]) -> None:
        self._addresses = tuple(addresses)  # before super().__init__, which makes the pools
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        http = _pinned(HTTPConnection, self._addresses)
        https = _pinned(HTTPSConnection, self._addresses)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("PinnedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("PinnedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise requests.exceptions.InvalidProxyURL("asset downloads never go through a proxy")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def download(
    url: str,
    headers: dict[str, str],
    headers_for: Callable[[str], dict[str, str]],
    policy: Policy,
    deadline: float,
    max_bytes: int,
    write: Callable[[bytes], None],
) -> int:
    """GET `url` into `write`, following redirects; returns the number of bytes.

    `headers` go with `url` and redirects to the same origin; after a redirect to another
    origin only `headers_for(new_url)` go (the client's headers for that URL, if any).
    `deadline` is a time.monotonic() value. Raises ReapiError: PERMISSION_DENIED (policy or
    origin refused), NOT_FOUND, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED (over `max_bytes`),
    Transient (worth a retry), other UNAVAILABLE or FAILED_PRECONDITION.
    """
    shown = redact(url)
    first_origin = _origin(url)
    current, hop_headers = url, headers
    with requests.Session() as session:
        session.trust_env = False  # no proxy, no netrc from the server's environment
        for _hop in range(MAX_REDIRECTS + 1):
            target = policy.target(current)
            addresses = policy.addresses(target)
            previous = session.adapters.get("http://")
            adapter = _PinnedAdapter(addresses)  # this hop's addresses only
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            if previous is not None:
                previous.close()
            response = _get(session, current, hop_headers, deadline, shown)
            with response:
                if response.status_code in REDIRECTS and "location" in response.headers:
                    following = urljoin(current, response.headers["location"])
                    # The client's headers stay with their origin.
                    same = _origin(following) == first_origin
                    hop_headers = headers if same else headers_for(following)
                    current = following
                    continue
                _check_status(response.status_code, shown, None if current == url else current)
                return _stream(response, deadline, max_bytes, write, shown)
        raise FailedPrecondition(f"{shown}: more than {MAX_REDIRECTS} redirects")


def _get(
    session: requests.Session, url: str, headers: dict[str, str], deadline: float, shown: str
) -> requests.Response:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded(f"{shown}: the download's time ran out")
    sent = {
        **headers,
        "User-Agent": USER_AGENT,
        "Accept": "*/*",
        "Accept-Encoding": "identity",
    }
    try:
        return session.get(
            url,
            headers=sent,
            stream=True,
            allow_redirects=False,
            timeout=(min(CONNECT_TIMEOUT, remaining), min(READ_TIMEOUT, remaining)),
        )
    except requests.exceptions.SSLError as exc:
        raise Unavailable(f"{shown}: TLS failed ({_reason(exc)})") from None
    except requests.exceptions.ConnectTimeout:
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"{shown}: no connection before the download's time ran out") from None
        raise Transient(f"{shown}: the connection timed out") from None
    except requests.exceptions.Timeout:
        if time.monotonic() >= deadline - 0.05:
            raise DeadlineExceeded(f"{shown}: no answer before the download's time ran out") from None
        raise Transient(f"{shown}: no answer within {READ_TIMEOUT:.0f} s") from None
    except (requests.exceptions.ConnectionError, urllib3.exceptions.HTTPError) as exc:
        raise Transient(f"{shown}: {_reason(exc)}") from None
    except requests.exceptions.RequestException as exc:
        raise Unavailable(f"{shown}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """The innermost cause's text: what went wrong, without urllib3's pool descriptions."""
    for _ in range(10):
        inner = exc.__cause__ or (
            exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        )
        reason = getattr(exc, "reason", None)
        inner = inner or (reason if isinstance(reason, BaseException) else None)
        if inner is None or inner is exc:
            break
        exc = inner
    text = str(exc)
    if isinstance(exc, urllib3.exceptions.NewConnectionError | ConnectTimeoutError):
        text = text.split("): ", 1)[-1]  # "PinnedHTTPConnection(host=…, port=…): cannot connect …"
    return text[:300] or type(exc).__name__


def _check_status(status: int, shown: str, redirected_to: str | None) -> None:
    if status == 200:
        return
    where = shown if redirected_to is None else f"{shown} (redirected to {redact(redirected_to)[:300]})"
    if status in (404, 410):
        raise NotFound(f"{where}: the origin answered {status}")
    if status in (401, 403, 407):
        raise PermissionDenied(f"{where}: the origin refused the download ({status})")
    if status == 429 or status >= 500:
        raise Transient(f"{where}: the origin answered {status}")
    raise FailedPrecondition(f"{where}: the origin answered {status}, not 200")


def _stream(
    response: requests.Response, deadline: float, max_bytes: int, write: Callable[[bytes], None], shown: str
) -> int:
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise TooLarge(
            f"{shown} is {int(length)} bytes, over the largest asset this server downloads "
            f"(REAPI_ASSET_MAX_BYTES={max_bytes})"
        )
    raw = response.raw
    total = 0
    while True:
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"{shown}: the download's time ran out after {total} bytes")
        try:
            chunk = raw.read1(CHUNK, decode_content=False)
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
            if time.monotonic() >= deadline - 0.05:
                raise DeadlineExceeded(f"{shown}: the download's time ran out after {total} bytes") from None
            raise Transient(f"{shown}: the origin went silent after {total} bytes") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(f"{shown}: the download broke off after {total} bytes ({_reason(exc)})") from None
        if not chunk:
            return total
        total += len(chunk)
        if total > max_bytes:
            raise TooLarge(
                f"{shown} is over the largest asset this server downloads (REAPI_ASSET_MAX_BYTES={max_bytes})"
            )
        write(chunk)
