"""Where the REAPI core meets gRPC: status-code mapping, the auth interceptor, RPC wrappers.

Every error the core raises is a reapi.errors.ReapiError; this module alone turns one into a
gRPC status (whole RPC) or a google.rpc.Status (one item of a batch). Any other exception
(a full disk, an unreachable bucket, a bug) becomes one through reapi.faults, which logs its
details under a request id and tells the client only the kind of failure and that id.
"""

import contextvars
import functools
import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, NoReturn, TypeVar

import grpc

from reapi import auth, faults, provenance
from reapi.errors import FailedPrecondition, PermissionDenied, ReapiError
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.google.rpc import status_pb2

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


# REAPI: clients send RequestMetadata, binary, under this key on every call.
REQUEST_METADATA_KEY = "build.bazel.remote.execution.v2.requestmetadata-bin"


def writer_of(who: auth.Principal, cluster: str, context: grpc.ServicerContext) -> provenance.Writer:
    """Who is writing, for provenance: the credential, plus the tool's own RequestMetadata."""
    meta = re_pb2.RequestMetadata()
    for key, value in context.invocation_metadata():
        if key == REQUEST_METADATA_KEY and isinstance(value, bytes):
            try:
                meta.ParseFromString(value)
            except Exception:
                meta.Clear()  # provenance is best effort about the client's claims
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


def _deny(err: ReapiError, streaming_response: bool) -> Callable[..., Any]:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        abort(context, err)

    def refuse_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        abort(context, err)
        yield  # pragma: no cover

    return refuse_stream if streaming_response else refuse


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


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates every call once, checks the method's scope, and hands the principal on.

    With `quick_pool`, the QUICK_METHODS run on that thread pool (grpc's per-handler
    `experimental_thread_pool`) rather than the server's; with `waiting_pool`, the
    WAITING_METHODS run on that one.
    """

    def __init__(
        self,
        quick_pool: futures.ThreadPoolExecutor | None = None,
        waiting_pool: futures.ThreadPoolExecutor | None = None,
    ) -> None:
        self.pools: dict[str, futures.ThreadPoolExecutor] = {}
        if quick_pool is not None:
            self.pools.update(dict.fromkeys(QUICK_METHODS, quick_pool))
        if waiting_pool is not None:
            self.pools.update(dict.fromkeys(WAITING_METHODS, waiting_pool))

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        try:
            who = auth.authenticate(handler_call_details.invocation_metadata)  # type: ignore[arg-type]
            if method not in METHOD_SCOPES:
                raise PermissionDenied(f"method {method} is not served to credentials")
            scope = METHOD_SCOPES[method]
            if scope is not None:
                who.require(scope)
        except ReapiError as err:
            refusal = err
            return _replace_behaviour(handler, lambda _inner, streams: _deny(refusal, streams))
        allowed = _replace_behaviour(handler, lambda inner, streams: _with_principal(inner, who, streams))
        pool = self.pools.get(method)
        if pool is not None:
            behaviour = allowed.unary_unary or allowed.unary_stream
            behaviour.experimental_thread_pool = pool  # type: ignore[union-attr]
        return allowed


def _with_principal(
    inner: Callable[..., Any], who: auth.Principal, streaming_response: bool
) -> Callable[..., Any]:
    if streaming_response:

        def run_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # Not reset afterwards: gRPC may close this generator from another thread, where
            # resetting would fail, and every call sets its own principal before it runs.
            _principal.set(who)
            yield from inner(request, context)

        return run_stream

    def run(request: Any, context: grpc.ServicerContext) -> Any:
        token = _principal.set(who)
        try:
            return inner(request, context)
        finally:
            _principal.reset(token)

    return run


def _replace_behaviour(
    handler: grpc.RpcMethodHandler,
    make: Callable[[Callable[..., Any], bool], Callable[..., Any]],
) -> grpc.RpcMethodHandler:
    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(make(handler.unary_unary, False), des, ser)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(make(handler.unary_stream, True), des, ser)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(make(handler.stream_unary, False), des, ser)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(make(handler.stream_stream, True), des, ser)
