"""Errors as google.rpc.Status messages, and status codes by name and number.

The numbers come from grpc.StatusCode (the canonical codes of google.rpc.Code), so no table of
them is written by hand. An ExecuteResponse carries its error as such a Status, and so does the
grpc-status-details-bin trailer of a refused call.
"""

import grpc

from reapi.errors import FailedPrecondition, ReapiError
from reapi.gen.google.rpc import status_pb2

NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}
NAMES = {number: name for name, number in NUMBERS.items()}
OK = NUMBERS["OK"]


def number(name: str) -> int:
    """The code named `name` (a ReapiError's `code`); INTERNAL for a name gRPC lacks."""
    return NUMBERS.get(name, NUMBERS["INTERNAL"])


def name(code: int) -> str:
    return NAMES.get(code, str(code))


def status(code_name: str, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=number(code_name), message=message)


def missing_blobs(missing: tuple[tuple[str, int], ...]) -> status_pb2.PreconditionFailure:
    """REAPI Execute: missing inputs go as a PreconditionFailure, one MISSING violation per
    blob, subject `blobs/{hash}/{size}`."""
    return status_pb2.PreconditionFailure(
        violations=[
            status_pb2.PreconditionFailure.Violation(type="MISSING", subject=f"blobs/{h}/{size}")
            for h, size in missing
        ]
    )


def of(err: ReapiError) -> status_pb2.Status:
    """The Status of an error, with the missing blobs of a FailedPrecondition as its detail."""
    result = status(err.code, err.message)
    if isinstance(err, FailedPrecondition) and err.missing:
        result.details.add().Pack(missing_blobs(err.missing))
    return result
