"""Every admitted or refused call counted in the grpc_server_* metrics and logged, one line,
by reapi.request_log, whatever its outcome."""

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from reapi import auth, metrics, request_log, request_metadata
from reapi.methods import PUBLIC_PREFIXES


def observed(
    inner: Callable[..., Any],
    method: str,
    grpc_type: str,
    streaming_response: bool,
    who: auth.Principal | None,
) -> Callable[..., Any]:
    """`inner` counted in the grpc_server_* metrics and logged, one line, by reapi.request_log."""
    counters = metrics.method(method, grpc_type)
    slug = who.tenant if who is not None else ""
    # Probes every few seconds: counted only.
    lines = None if method.startswith(PUBLIC_PREFIXES) else request_log.Lines(method, who)
    if streaming_response:

        def run_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            counters.started.inc()
            call = request_log.Call(slug)
            request_log.current.set(call)  # not reset: see reapi.admission._with_principal
            start = time.perf_counter()
            failure: grpc.StatusCode | None = None
            try:
                yield from inner(request, context)
            except GeneratorExit:
                failure = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                failure = grpc.StatusCode.UNKNOWN
                raise
            finally:
                _done(counters, context, start, call, failure, lines)

        return run_stream

    def run(request: Any, context: grpc.ServicerContext) -> Any:
        counters.started.inc()
        call = request_log.Call(slug)
        token = request_log.current.set(call)
        start = time.perf_counter()
        failure: grpc.StatusCode | None = None
        try:
            return inner(request, context)
        except BaseException:
            failure = grpc.StatusCode.UNKNOWN
            raise
        finally:
            request_log.current.reset(token)
            _done(counters, context, start, call, failure, lines)

    return run


_OK = grpc.StatusCode.OK
_INFO, _WARNING = logging.INFO, logging.WARNING


def _done(
    counters: metrics.Method | metrics.Uncounted,
    context: grpc.ServicerContext,
    start: float,
    call: request_log.Call,
    failure: grpc.StatusCode | None,
    lines: request_log.Lines | None,
) -> None:
    seconds = time.perf_counter() - start
    # An abort (every error of ours) set the code; an exception past it is grpcio's UNKNOWN.
    code = context.code() or failure or _OK  # type: ignore[attr-defined]
    # StatusCode's name and hash are Python-level enum code: a successful call, most of them,
    # takes neither.
    name = "OK" if code is _OK else code.name
    counters.done(name, seconds)
    if lines is not None and request_log.log.isEnabledFor(_INFO if name in request_log.NORMAL else _WARNING):
        details = context.details() if code is not _OK else b""  # type: ignore[attr-defined]
        lines.done(
            name,
            seconds,
            call.bytes,
            request_metadata.of_call(context),  # type: ignore[arg-type]
            context.peer(),
            details.decode("utf-8", "replace") if isinstance(details, bytes) else str(details or ""),
        )
