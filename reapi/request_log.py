"""One log line per RPC (logger `reapi.requests`, INFO), in logfmt or JSON (REAPI_LOG_FORMAT).

The line names the method, code, duration, CAS bytes moved, tenant, token prefix (never the
token), the tool's invocation and action ids, and the peer. A failed call's line carries the
request id its client's message shows ("… (request 3f2a9c1d0b4e)"), so an operator handed
that message finds the line. Nothing is formatted when the logger is off for INFO.
"""

import collections
import contextlib
import contextvars
import json
import logging
import re
import threading
from typing import Any

log = logging.getLogger("reapi.requests")

REQUEST_ID = re.compile(r"\(request ([0-9a-f]{12})\)")
_LOGFMT_SAFE = re.compile(r"[A-Za-z0-9_.:/@+\-]+")


class Call:
    """What the edge keeps about the call a thread is serving."""

    __slots__ = ("bytes", "tenant")

    def __init__(self, tenant: str = "") -> None:
        self.bytes = 0
        self.tenant = tenant


def tenant() -> str:
    """The tenant of the call this thread serves ("" outside calls)."""
    call = current.get()
    return call.tenant if call is not None else ""


current: contextvars.ContextVar[Call | None] = contextvars.ContextVar("call", default=None)


def request_id(details: str) -> str:
    found = REQUEST_ID.search(details)
    return found.group(1) if found else ""


# Codes that are a normal answer, logged at INFO; any other at WARNING, so that the logger at
# WARNING (REAPI_REQUEST_LOG=errors) keeps the failures, request ids included, for the cost
# of nothing per successful call.
NORMAL = frozenset({"OK", "NOT_FOUND"})


def _value(value: Any) -> str:
    # Quoted (JSON string escapes) when empty or when it holds anything but a plain token:
    # what a client sent cannot start a field of its own or a line.
    text = value if isinstance(value, str) else str(value)
    if not text:
        return '""'
    # ASCII letters and digits (a Bazel action id is hex) pass without the regular expression.
    if text.isascii() and text.isalnum():
        return text
    return text if _LOGFMT_SAFE.fullmatch(text) else json.dumps(text)


# A duration's milliseconds as three digits, looked up: a format spec costs ~0.4 µs a line.
_THOUSANDTHS = tuple(f"{n:03d}" for n in range(1000))


# _value of the strings a server logs again and again (a build's invocation id, a client's
# address), remembered: a dict lookup instead of a regular
# expression. Bounded; emptied when full (what was in it is cheap to work out again).
_QUOTED_MAX = 4096
_quoted: dict[str, str] = {}


def _quote(text: str) -> str:
    found = _quoted.get(text)
    if found is None:
        if len(_quoted) >= _QUOTED_MAX:
            _quoted.clear()
        found = _quoted[text] = _value(text)
    return found


JSON = False  # REAPI_LOG_FORMAT=json; set once by reapi.server.build

# The BatchingHandler that alone receives this logger's records (write_in_batches), or None.
# Lines go to it straight, without a LogRecord each: with the line built field by field in
# Lines.done, a GetActionResult's line costs 2.7 µs instead of 8.6 µs through a LogRecord and a
# dict of fields (one core, timeit).
_sink: "BatchingHandler | None" = None


def _write(level: int, line: str) -> None:
    sink = _sink
    if sink is not None:
        sink.add(line)
    else:
        log.log(level, "%s", line)


class Lines:
    """The log lines of one method's calls by one principal (None before one is known): what
    they share, the method, tenant and token prefix, is quoted and joined once, when the edge
    makes the call's handler, not on every call."""

    __slots__ = ("head", "method", "middle", "prefix", "tenant")

    def __init__(self, method: str, who: Any) -> None:
        self.method = method
        self.tenant = who.tenant if who is not None else ""
        self.prefix = who.token_prefix if who is not None else ""
        self.head = f"method={method[1:]} code="
        self.middle = f" tenant={_value(self.tenant)} token_prefix={_value(self.prefix)}"

    def done(self, code: str, seconds: float, nbytes: int, meta: Any, peer: str, details: str) -> None:
        """Log the line of one finished call. `meta`: its RequestMetadata; `details`: the
        message its client was sent (errors only)."""
        if JSON:
            self._json(code, seconds, nbytes, meta, peer, details)
            return
        # logfmt written out field by field (a dict and a generator cost as much again): the
        # method and code are ours and the numbers are numbers; what a client or the database
        # gave goes through _value.
        micros = int(seconds * 1_000_000)  # an int formats faster than round()'s float
        # _quote's memo read here, its call only on a miss.
        quoted = _quoted.get
        invocation = meta.tool_invocation_id[:100]
        line = (
            f"{self.head}{code} duration_ms={micros // 1000}.{_THOUSANDTHS[micros % 1000]} bytes={nbytes}{self.middle}"
            f" tool_invocation_id={quoted(invocation) or _quote(invocation)}"
            f" action_id={_value(meta.action_id[:100])} peer={quoted(peer) or _quote(peer)}"
        )
        if code != "OK":
            line += f" request_id={_value(request_id(details))} error={_value(details[:300])}"
        sink = _sink  # _write inlined
        if sink is not None:
            sink.add(line)
        else:
            log.log(logging.INFO if code in NORMAL else logging.WARNING, "%s", line)

    def _json(self, code: str, seconds: float, nbytes: int, meta: Any, peer: str, details: str) -> None:
        fields: dict[str, Any] = {
            "method": self.method.lstrip("/"),
            "code": code,
            "duration_ms": round(seconds * 1000, 3),
            "bytes": nbytes,
            "tenant": self.tenant,
            "token_prefix": self.prefix,
            "tool_invocation_id": meta.tool_invocation_id[:100],
            "action_id": meta.action_id[:100],
            "peer": peer,
        }
        if code != "OK":
            fields["request_id"] = request_id(details)
            fields["error"] = details[:300]
        _write(logging.INFO if code in NORMAL else logging.WARNING, json.dumps(fields, separators=(",", ":")))


class BatchingHandler(logging.Handler):
    """Writes the request log's lines to `stream` in batches, every `interval` seconds.

    A line per call written and flushed at once cost a server ~60 µs of CPU a call (a system
    call each, and the GIL handed round the threads waiting for it): over a quarter of a
    GetActionResult. In batches it costs what formatting the line does. A line reaches the
    stream within `interval`; `close` writes what is left.
    """

    def __init__(self, stream: Any, interval: float = 0.5) -> None:
        super().__init__()
        self.stream = stream
        self.interval = interval
        self._lines: collections.deque[str] = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.add(self.format(record))
        except Exception:
            self.handleError(record)

    def add(self, line: str) -> None:
        # A deque's append and popleft are atomic: no lock between the serving threads.
        self._lines.append(line)

    def flush(self) -> None:
        pending = self._lines
        # popleft as many as are there now; lines added meanwhile wait for the next flush.
        lines = [pending.popleft() for _ in range(len(pending))]
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            # A closed or full stream: those lines are dropped, the server goes on.
            with contextlib.suppress(Exception):
                self.flush()

    def close(self) -> None:
        global _sink
        if _sink is self:
            _sink = None
        self._stop.set()
        self.flush()
        super().close()


def write_in_batches(stream: Any) -> BatchingHandler:
    """Send the request log to `stream` in batches instead of through the root handlers."""
    global _sink
    handler = BatchingHandler(stream)
    log.addHandler(handler)
    log.propagate = False
    _sink = handler
    return handler
