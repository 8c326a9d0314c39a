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

from reapi import faults
from reapi.errors import FailedPrecondition, RateLimited, ReapiError
from reapi.gen.google.rpc import error_details_pb2, status_pb2

log = logging.getLogger(__name__)

CODES = {code.name: code for code in grpc.StatusCode}


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
