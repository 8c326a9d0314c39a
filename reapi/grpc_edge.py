"""Where the REAPI core meets gRPC: status-code mapping, the interceptor that admits calls
(load shedding, credentials, scopes, per-credential limits, thread pools), RPC wrappers.

Every error the core raises is a reapi.errors.ReapiError; this module alone turns one into a
gRPC status (whole RPC) or a google.rpc.Status (one item of a batch). Any other exception
(a full disk, an unreachable bucket, a bug) becomes one through reapi.faults, which logs its
details under a request id and tells the client only the kind of failure and that id.
"""

import contextvars
import functools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc

from reapi import auth, faults, metrics, provenance, request_log, request_metadata
from reapi.errors import (
    FailedPrecondition,
    PermissionDenied,
    RateLimited,
    ReapiError,
    Unauthenticated,
    Unavailable,
)
from reapi.gen.google.rpc import error_details_pb2, status_pb2
from reapi.limits import Credential, Limiter, note_shed

log = logging.getLogger(__name__)

_principal: contextvars.ContextVar[auth.Principal] = contextvars.ContextVar("principal")

CODES = {code.name: code for code in grpc.StatusCode}

# The scope each method needs. None: any valid credential. Methods absent from this table
# (health checks, reflection) need no credential.
CAS = "/build.bazel.remote.execution.v2.ContentAddressableStorage/"
AC = "/build.bazel.remote.execution.v2.ActionCache/"
BS = "/google.bytestream.ByteStream/"
EXE = "/build.bazel.remote.execution.v2.Execution/"
OPS = "/google.longrunning.Operations/"
FETCH = "/build.bazel.remote.asset.v1.Fetch/"
PUSH = "/build.bazel.remote.asset.v1.Push/"
METHOD_SCOPES: dict[str, str | None] = {
    "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities": None,
    CAS + "FindMissingBlobs": "cas:read",
    CAS + "BatchReadBlobs": "cas:read",
    CAS + "GetTree": "cas:read",
    CAS + "BatchUpdateBlobs": "cas:write",
    BS + "Read": "cas:read",
    BS + "Write": "cas:write",
    BS + "QueryWriteStatus": "cas:write",
    AC + "GetActionResult": "ac:read",
    AC + "UpdateActionResult": "ac:write",
    EXE + "Execute": "execute",
    EXE + "WaitExecution": "execute",
    OPS + "GetOperation": "execute",
    OPS + "ListOperations": "execute",
    OPS + "CancelOperation": "execute",
    OPS + "WaitOperation": "execute",
    OPS + "DeleteOperation": "execute",
    # Remote Asset API: a cached asset is a CAS read; a download (checked again in
    # asset_service: cas:write) and a push write the CAS.
    FETCH + "FetchBlob": "cas:read",
    FETCH + "FetchDirectory": "cas:read",
    PUSH + "PushBlob": "cas:write",
    PUSH + "PushDirectory": "cas:write",
}
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)


def principal() -> auth.Principal:
    return _principal.get()


REQUEST_METADATA_KEY = request_metadata.KEY


def writer_of(who: auth.Principal, cluster: str, context: grpc.ServicerContext) -> provenance.Writer:
    """Who is writing, for provenance: the credential, plus the tool's own RequestMetadata."""
    meta = request_metadata.of_call(context)
    return provenance.Writer(
        token_id=who.token_id,
        token_prefix=who.token_prefix,
        user_id=who.user_id,
        username=who.username,
        cluster=cluster,
        tool_name=meta.tool_details.tool_name,
        tool_version=meta.tool_details.tool_version,
        tool_invocation_id=meta.tool_invocation_id,
        correlated_invocations_id=meta.correlated_invocations_id,
        action_mnemonic=meta.action_mnemonic[:100],
        target_id=meta.target_id[:300],
    )


def status_code(err: ReapiError) -> grpc.StatusCode:
    return CODES.get(err.code, grpc.StatusCode.INTERNAL)


def rpc_status(err: ReapiError | None) -> status_pb2.Status:
    if err is None:
        return status_pb2.Status(code=0)
    return status_pb2.Status(code=status_code(err).value[0], message=err.message)


def abort(context: grpc.ServicerContext, err: ReapiError) -> NoReturn:
    if isinstance(err, FailedPrecondition) and err.missing:
        _attach_missing(context, err)
    if isinstance(err, RateLimited):
        _attach_retry_info(context, err)
    context.abort(status_code(err), err.message)
    raise AssertionError("unreachable")  # context.abort raises


def _attach_missing(context: grpc.ServicerContext, err: FailedPrecondition) -> None:
    # REAPI Execute: missing inputs SHOULD come with a PreconditionFailure detail, one
    # MISSING violation per blob, subject "blobs/{hash}/{size}". Sent in the standard
    # grpc-status-details-bin trailer.
    from google.protobuf import any_pb2

    failure = status_pb2.PreconditionFailure(
        violations=[
            status_pb2.PreconditionFailure.Violation(type="MISSING", subject=f"blobs/{h}/{s}")
            for h, s in err.missing
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(failure)
    status = status_pb2.Status(
        code=grpc.StatusCode.FAILED_PRECONDITION.value[0], message=err.message, details=[detail]
    )
    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))


def _attach_retry_info(context: grpc.ServicerContext, err: RateLimited) -> None:
    # google.rpc.RetryInfo: how long to wait before retrying, in the same trailer as the
    # PreconditionFailure above; the Status it travels in repeats the call's code and message.
    from google.protobuf import any_pb2

    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromNanoseconds(max(1, int(err.retry_after * 1e9)))
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=status_code(err).value[0], message=err.message, details=[detail])
    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))


F = TypeVar("F", bound=Callable[..., Any])


def unary(method: F) -> F:
    """Run a unary-response RPC body, mapping ReapiError to its status and any other exception
    to the status reapi.faults gives it (its details only in the log)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except ReapiError as err:
            abort(context, err)
        except Exception as exc:
            abort(context, faults.as_error(exc, method.__name__))

    return wrapper  # type: ignore[return-value]


def streaming(method: F) -> F:
    """Run a stream-response RPC body, mapping errors as `unary` does."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except ReapiError as err:
            abort(context, err)
        except Exception as exc:
            abort(context, faults.as_error(exc, method.__name__))

    return wrapper  # type: ignore[return-value]


# Short unary reads that touch local storage once or not at all (BatchReadBlobs opens 100
# files, and would rather wait on a slow disk in parallel). Given a few threads of their own (see
# AuthInterceptor), they run back to back on busy threads: in the main pool, sized for streams
# that wait for minutes, every call woke an idle thread and put one to sleep, and the GIL
# went round many threads (GetActionResult: 2,000-2,300 calls/s with 32 threads, 2,450-2,700
# with 4-8, on 2 cores under load).
QUICK_METHODS = frozenset(
    {
        "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
        CAS + "FindMissingBlobs",
        AC + "GetActionResult",
    }
)


# Calls that wait for an operation for as long as the action runs (minutes): Bazel keeps one
# open per remote action, so with --jobs=200 two hundred of them. On a pool of their own, with
# a thread each (they hold no database connection while they wait: execution_service.follow),
# they never take the threads that cache calls need.
WAITING_METHODS = frozenset(
    {
        "/build.bazel.remote.execution.v2.Execution/Execute",
        "/build.bazel.remote.execution.v2.Execution/WaitExecution",
        "/google.longrunning.Operations/WaitOperation",
        # Waits for a download (minutes for a large archive); its lookups run on db_threads.
        FETCH + "FetchBlob",
    }
)


# Calls that hold their thread for as long as the client keeps them open: REAPI_TOKEN_STREAMS
# caps how many of them one credential has running (WaitOperation is unary, but waits as long).
STREAM_METHODS = WAITING_METHODS | {BS + "Read", BS + "Write"}

HEALTH = "/grpc.health.v1.Health/"

# reapi_auth_failures_total's reason for what authenticating raised.
_AUTH_REASONS: dict[type, str] = {Unauthenticated: "unauthenticated", Unavailable: "credential_store"}

# What a stream needs to take one of its credential's slots (None: not a stream).
Slot = tuple[Limiter, Credential] | None


@dataclass(frozen=True)
class Pools:
    """The thread pools of one server process, by the calls they run.

    grpcio hands each admitted call to a pool's queue; a call waits there for a thread.
    """

    main: futures.ThreadPoolExecutor  # every call not named below
    refusals: futures.ThreadPoolExecutor  # refusals: they answer at once and read no request
    health: futures.ThreadPoolExecutor  # grpc.health.v1 Check, which must answer under load
    waiting: futures.ThreadPoolExecutor | None = None  # WAITING_METHODS, and health Watch
    quick: futures.ThreadPoolExecutor | None = None  # QUICK_METHODS

    def routes(self) -> dict[str, tuple[str, futures.ThreadPoolExecutor]]:
        table = {HEALTH + "Check": ("health", self.health)}
        if self.quick is not None:
            table.update(dict.fromkeys(QUICK_METHODS, ("quick", self.quick)))
        if self.waiting is not None:
            table.update(dict.fromkeys(WAITING_METHODS | {HEALTH + "Watch"}, ("waiting", self.waiting)))
        return table


class AuthInterceptor(grpc.ServerInterceptor):
    """Admits every call: sheds it when its pool's queue is full, authenticates it once,
    checks the method's scope and the credential's limits, and hands the principal on.

    It runs where grpcio admits calls, one at a time, before a call has a thread: a refusal
    here costs no thread of the pool it would have queued in (reapi/limits.py relies on the
    one-at-a-time too).
    """

    def __init__(self, pools: Pools, limiter: Limiter | None = None, max_queued: int = 256) -> None:
        self.pools = pools
        self.limiter = limiter
        self.max_queued = max_queued
        self.routes = pools.routes()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        name, pool = self.routes.get(method, ("main", self.pools.main))
        who: auth.Principal | None = None
        try:
            # Shed before anything else: a call that would queue behind this many is better
            # answered now, so the client retries (elsewhere) before its deadline passes.
            if pool._work_queue.qsize() >= self.max_queued:
                note_shed(name, time.monotonic())
                raise Unavailable(
                    "this server process is overloaded (its queue of calls is full); retry shortly"
                )
            if method.startswith(PUBLIC_PREFIXES):
                return _replace_behaviour(handler, _same, pool, method, None)
            try:
                who = auth.authenticate(handler_call_details.invocation_metadata)  # type: ignore[arg-type]
            except ReapiError as err:
                metrics.auth_failure(_AUTH_REASONS.get(type(err), "unauthenticated"))
                raise
            if method not in METHOD_SCOPES:
                metrics.auth_failure("method")
                raise PermissionDenied(f"method {method} is not served to credentials")
            scope = METHOD_SCOPES[method]
            if scope is not None and scope not in who.scopes:
                metrics.auth_failure("scope")
                who.require(scope)
            slot = self._admit(who, method)
        except ReapiError as err:
            return self._refusal(err, handler, method, who)
        principal_of = who
        return _replace_behaviour(
            handler,
            lambda inner, streams: _with_principal(inner, principal_of, streams, slot),
            pool,
            method,
            who,
        )

    def _admit(self, who: auth.Principal, method: str) -> Slot:
        """Take a token from the credential's bucket; for a stream, what it needs for a slot."""
        if self.limiter is None:
            return None
        state = self.limiter.admit(who.caller)
        if method not in STREAM_METHODS:
            return None
        if self.limiter.streams_full(state):
            raise self.limiter.streams_refusal(state, who.caller)
        return self.limiter, state

    def _refusal(
        self, err: ReapiError, handler: grpc.RpcMethodHandler, method: str, who: auth.Principal | None
    ) -> grpc.RpcMethodHandler:
        # Served as a client-streaming call whatever the method, so grpcio never waits for
        # the request message (a slow client cannot hold the refusals' threads), and on
        # threads of its own, so it does not queue behind the calls it refuses to add to.
        def refuse(_requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            abort(context, err)

        behaviour = _observed(refuse, method, _grpc_type(handler), False, who)
        behaviour.experimental_thread_pool = self.pools.refusals  # type: ignore[attr-defined]
        return grpc.stream_unary_rpc_method_handler(behaviour)


def _same(inner: Callable[..., Any], streaming_response: bool) -> Callable[..., Any]:
    """The behaviour unchanged, in a function of its own that can carry a thread pool."""
    if streaming_response:

        def run_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            yield from inner(request, context)

        return run_stream
    return lambda request, context: inner(request, context)


def _with_principal(
    inner: Callable[..., Any],
    who: auth.Principal,
    streaming_response: bool,
    slot: Slot,
) -> Callable[..., Any]:
    if streaming_response:

        def run_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # Not reset afterwards: gRPC may close this generator from another thread, where
            # resetting would fail, and every call sets its own principal before it runs.
            _principal.set(who)
            ticket = _open_stream(slot, who, context)
            try:
                yield from inner(request, context)
            finally:
                _close_stream(slot, ticket)

        return run_stream

    def run(request: Any, context: grpc.ServicerContext) -> Any:
        ticket = _open_stream(slot, who, context)
        token = _principal.set(who)
        try:
            return inner(request, context)
        finally:
            _principal.reset(token)
            _close_stream(slot, ticket)

    return run


def _open_stream(slot: Slot, who: auth.Principal, context: grpc.ServicerContext) -> int:
    """Take one of the credential's stream slots (REAPI_TOKEN_STREAMS) for this call, or abort.

    Taken here, when the call has its thread, and not at admission: grpcio never runs a call
    whose client left while it was queued, and such a call would keep its slot for ever.
    """
    if slot is None:
        return -1
    limiter, state = slot
    try:
        ticket = limiter.open_stream(state, who.caller)
    except RateLimited as err:
        abort(context, err)
    # However the call ends, also when the client leaves while a generator is suspended.
    if not context.add_callback(lambda: limiter.close_stream(state, ticket)):
        limiter.close_stream(state, ticket)
    return ticket


def _close_stream(slot: Slot, ticket: int) -> None:
    if slot is not None:
        slot[0].close_stream(slot[1], ticket)


def _replace_behaviour(
    handler: grpc.RpcMethodHandler,
    make: Callable[[Callable[..., Any], bool], Callable[..., Any]],
    pool: futures.ThreadPoolExecutor,
    method: str,
    who: auth.Principal | None,
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour wrapped by `make` and observed (metrics, request log), to
    run on `pool` (grpcio's per-behaviour experimental_thread_pool)."""
    des, ser = handler.request_deserializer, handler.response_serializer
    grpc_type = _grpc_type(handler)
    if handler.unary_unary:
        behaviour = make(handler.unary_unary, False)
        wrap: Callable[..., grpc.RpcMethodHandler] = grpc.unary_unary_rpc_method_handler
    elif handler.unary_stream:
        behaviour, wrap = make(handler.unary_stream, True), grpc.unary_stream_rpc_method_handler
    elif handler.stream_unary:
        behaviour, wrap = make(handler.stream_unary, False), grpc.stream_unary_rpc_method_handler
    else:
        assert handler.stream_stream is not None
        behaviour, wrap = make(handler.stream_stream, True), grpc.stream_stream_rpc_method_handler
    behaviour = _observed(behaviour, method, grpc_type, bool(handler.response_streaming), who)
    behaviour.experimental_thread_pool = pool  # type: ignore[attr-defined]
    return wrap(behaviour, des, ser)


def _grpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _observed(
    inner: Callable[..., Any],
    method: str,
    grpc_type: str,
    streaming_response: bool,
    who: auth.Principal | None,
) -> Callable[..., Any]:
    """`inner` counted in the grpc_server_* metrics and logged, one line, by reapi.request_log."""
    counters = metrics.method(method, grpc_type)
    slug = who.tenant if who is not None else ""
    logged = not method.startswith(PUBLIC_PREFIXES)  # probes every few seconds: counted only
    if streaming_response:

        def run_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            counters.started.inc()
            call = request_log.Call(slug)
            request_log.current.set(call)  # not reset: see _with_principal
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
                _done(counters, context, start, call, failure, method, who, logged)

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
            _done(counters, context, start, call, failure, method, who, logged)

    return run


def _done(
    counters: metrics.Method,
    context: grpc.ServicerContext,
    start: float,
    call: request_log.Call,
    failure: grpc.StatusCode | None,
    method: str,
    who: auth.Principal | None,
    logged: bool,
) -> None:
    seconds = time.perf_counter() - start
    # An abort (every error of ours) set the code; an exception past it is grpcio's UNKNOWN.
    code = context.code() or failure or grpc.StatusCode.OK  # type: ignore[attr-defined]
    counters.done(code, seconds)
    if logged and request_log.enabled(code.name):
        details = context.details() if code is not grpc.StatusCode.OK else b""  # type: ignore[attr-defined]
        request_log.call_done(
            method,
            code.name,
            seconds,
            call.bytes,
            who,
            request_metadata.of_call(context),  # type: ignore[arg-type]
            context.peer(),
            details.decode("utf-8", "replace") if isinstance(details, bytes) else str(details or ""),
        )
