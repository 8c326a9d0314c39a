"""Admission of every call: shed it when its pool's queue is full, authenticate it once, check
the method's scope and the credential's limits, and hand the principal on to the servicer
(reapi.call_context). Refusals are answered here, on threads of their own.
"""

import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from reapi import auth, metrics
from reapi.call_context import current_principal
from reapi.call_pools import Pools
from reapi.errors import PermissionDenied, RateLimited, ReapiError, Unauthenticated, Unavailable
from reapi.grpc_edge import abort
from reapi.limits import Credential, Limiter, note_shed
from reapi.methods import METHOD_SCOPES, PUBLIC_PREFIXES, STREAM_METHODS
from reapi.observation import observed

# reapi_auth_failures_total's reason for what authenticating raised.
_AUTH_REASONS: dict[type, str] = {Unauthenticated: "unauthenticated", Unavailable: "credential_store"}

# Admitted handlers kept for reuse (AuthInterceptor._made), at most.
MADE_HANDLERS = 4096

# What a stream needs to take one of its credential's slots (None: not a stream).
Slot = tuple[Limiter, Credential] | None


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
        # (method, id(principal), id(limiter state)) -> (principal, state, handler): see below.
        self._made: dict[
            tuple[str, int, int], tuple[auth.Principal, Credential | None, grpc.RpcMethodHandler]
        ] = {}

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
        # The handler made for this method, principal and stream-limit state before, while the
        # credential cache keeps serving the same Principal object: wrapping anew costs eight
        # calls of Python code per RPC. Keyed by identity and checked, so a principal or a
        # limiter state made again (a new check, a pruned bucket) gets a handler of its own.
        state = slot[1] if slot is not None else None
        key = (method, id(who), id(state))
        made = self._made.get(key)
        if made is not None and made[0] is who and made[1] is state:
            return made[2]
        principal_of = who
        admitted = _replace_behaviour(
            handler,
            lambda inner, streams: _with_principal(inner, principal_of, streams, slot),
            pool,
            method,
            who,
        )
        if len(self._made) >= MADE_HANDLERS:
            self._made.clear()  # cheap to make again
        self._made[key] = (who, state, admitted)
        return admitted

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

        behaviour = observed(refuse, method, grpc_type(handler), False, who)
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
            current_principal.set(who)
            ticket = _open_stream(slot, who, context)
            try:
                yield from inner(request, context)
            finally:
                _close_stream(slot, ticket)

        return run_stream

    if slot is None:
        # No stream slot to take (a unary call, or no limits): what most calls are.
        def run_plain(request: Any, context: grpc.ServicerContext) -> Any:
            token = current_principal.set(who)
            try:
                return inner(request, context)
            finally:
                current_principal.reset(token)

        return run_plain

    def run(request: Any, context: grpc.ServicerContext) -> Any:
        ticket = _open_stream(slot, who, context)
        token = current_principal.set(who)
        try:
            return inner(request, context)
        finally:
            current_principal.reset(token)
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
    kind = grpc_type(handler)
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
    behaviour = observed(behaviour, method, kind, bool(handler.response_streaming), who)
    behaviour.experimental_thread_pool = pool  # type: ignore[attr-defined]
    return wrap(behaviour, des, ser)


def grpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"
