"""Where the REAPI core's errors become gRPC statuses, and the wrappers every RPC body runs in.

Every error the core raises is a reapi.errors.ReapiError; this module alone turns one into a
gRPC status (whole RPC) or a google.rpc.Status (one item of a batch). Any other exception
(a full disk, an unreachable bucket, a bug) becomes one through reapi.faults, which logs its
details under a request id and tells the client only the kind of failure and that id.

The rest of the edge: reapi/admission.py (who may call what, and on which threads:
reapi/methods.py, reapi/call_pools.py), reapi/observation.py (metrics and the request log of
every call), reapi/call_context.py (the principal a servicer serves).
"""

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc

from reapi import error_status, faults
from reapi.errors import FailedPrecondition, RateLimited, ReapiError
from reapi.gen.google.rpc import error_details_pb2, status_pb2

log = logging.getLogger(__name__)

CODES = {code.name: code for code in grpc.StatusCode}


def status_code(err: ReapiError) -> grpc.StatusCode:
    return CODES.get(err.code, grpc.StatusCode.INTERNAL)


def rpc_status(err: ReapiError | None) -> status_pb2.Status:
    """One item's status in a batch reply (no details: the reply's other items say the rest)."""
    if err is None:
        return status_pb2.Status(code=error_status.OK)
    return error_status.status(err.code, err.message)


def abort(context: grpc.ServicerContext, err: ReapiError) -> NoReturn:
    """End the call with `err`'s status. Details go in the standard grpc-status-details-bin
    trailer, a google.rpc.Status repeating the code and message: the missing blobs of a
    FailedPrecondition (REAPI Execute: a PreconditionFailure, one MISSING violation per blob),
    and for a RateLimited a google.rpc.RetryInfo, how long to wait before retrying."""
    if isinstance(err, FailedPrecondition) and err.missing:
        _attach(context, error_status.of(err))
    if isinstance(err, RateLimited):
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(max(1, int(err.retry_after * 1e9)))
        status = error_status.status(err.code, err.message)
        status.details.add().Pack(info)
        _attach(context, status)
    context.abort(status_code(err), err.message)
    raise AssertionError("unreachable")  # context.abort raises


def _attach(context: grpc.ServicerContext, status: status_pb2.Status) -> None:
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
