"""The one error hierarchy of the REAPI core.

The core raises these; only reapi/grpc_edge.py turns them into gRPC status codes (for whole
RPCs), and reapi/error_status.py into google.rpc.Status messages (for an ExecuteResponse, or one
blob inside a batch). `code` is the canonical gRPC code name, shared by both; each class names
its own (`class NotFound(ReapiError, code="NOT_FOUND")`), a subclass without one keeps its
parent's.
"""


class ReapiError(Exception):
    code = "INTERNAL"

    def __init_subclass__(cls, code: str = "", **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if code:
            cls.code = code

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ReapiError, code="INVALID_ARGUMENT"): ...


class NotFound(ReapiError, code="NOT_FOUND"): ...


class FailedPrecondition(ReapiError, code="FAILED_PRECONDITION"):
    def __init__(self, message: str, missing: tuple[tuple[str, int], ...] = ()) -> None:
        super().__init__(message)
        # (hash, size) of blobs missing from the CAS, sent as PreconditionFailure details.
        self.missing = missing


class PermissionDenied(ReapiError, code="PERMISSION_DENIED"): ...


class Unauthenticated(ReapiError, code="UNAUTHENTICATED"): ...


class OutOfRange(ReapiError, code="OUT_OF_RANGE"): ...


class ResourceExhausted(ReapiError, code="RESOURCE_EXHAUSTED"): ...


class RateLimited(ResourceExhausted):
    """A credential over one of its limits (reapi/limits.py); sent with a RetryInfo detail."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds until the call may succeed


class Cancelled(ReapiError, code="CANCELLED"): ...


class DeadlineExceeded(ReapiError, code="DEADLINE_EXCEEDED"): ...


class Aborted(ReapiError, code="ABORTED"): ...


class Unimplemented(ReapiError, code="UNIMPLEMENTED"): ...


class Unavailable(ReapiError, code="UNAVAILABLE"): ...


class Internal(ReapiError, code="INTERNAL"): ...
