"""gRPC edge of google.longrunning.Operations for execution operations.

Every call sees only the caller's tenant's operations on this cluster: another tenant's
operation is NOT_FOUND, exactly like one that never existed.
"""

import time

import grpc
from google.protobuf import empty_pb2

from reapi import db_threads, operation_watch, operations, page_tokens
from reapi.call_context import principal
from reapi.errors import FailedPrecondition, InvalidArgument
from reapi.gen.google.longrunning import operations_pb2
from reapi.gen.google.longrunning import operations_pb2_grpc as ops_grpc
from reapi.grpc_edge import unary
from workers.models import Operation

DEFAULT_PAGE = 100
MAX_PAGE = 1000
# WaitOperation without a timeout returns after this at the latest (google.longrunning lets
# the server bound the wait; the client calls again).
MAX_WAIT_SECONDS = 60.0
FILTERS = {"": None, "done=true": True, "done=false": False}


class OperationsService(ops_grpc.OperationsServicer):
    def __init__(self, cluster: str) -> None:
        self.cluster = cluster

    def _find(self, name: str) -> Operation:
        return operations.find(principal().tenant_id, self.cluster, name)

    @unary
    def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        return operations.to_proto(self._find(request.name))

    @unary
    def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: grpc.ServicerContext
    ) -> operations_pb2.ListOperationsResponse:
        who = principal()
        # `name` is the collection: empty, or the caller's instance (its tenant slug).
        who.check_instance(request.name.removesuffix("/operations").removesuffix("operations"))
        key = request.filter.replace(" ", "").lower()
        if key not in FILTERS:
            raise InvalidArgument(
                f"filter {request.filter[:80]!r} is not supported (use done=true or done=false)"
            )
        if request.page_size < 0:
            raise InvalidArgument(f"page_size {request.page_size} is negative")
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        rows = Operation.objects.filter(tenant_id=who.tenant_id, cluster=self.cluster).order_by("-id")
        done = FILTERS[key]
        if done is not None:
            rows = rows.filter(done=done)
        if request.page_token:
            rows = rows.filter(id__lt=page_tokens.decode("op", request.page_token))
        page = list(rows[: size + 1])
        token = page_tokens.encode("op", page[size - 1].pk) if len(page) > size else ""
        return operations_pb2.ListOperationsResponse(
            operations=[operations.to_proto(op) for op in page[:size]], next_page_token=token
        )

    @unary
    def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        # Cancelling a finished operation changes nothing (request_cancel's updates want it unfinished).
        operations.request_cancel(self._find(request.name))
        return empty_pb2.Empty()

    @unary
    def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        # A thread of its own that waits without a database connection (reapi/db_threads.py).
        op = db_threads.run(operations.find, principal().tenant_id, self.cluster, request.name)
        limit = MAX_WAIT_SECONDS
        if request.HasField("timeout"):
            limit = min(max(request.timeout.ToTimedelta().total_seconds(), 0.0), MAX_WAIT_SECONDS)
        remaining = context.time_remaining()
        if remaining is not None:
            limit = min(limit, max(remaining - 0.5, 0.0))
        deadline = time.monotonic() + limit
        while not op.done and (left := deadline - time.monotonic()) > 0 and context.is_active():
            op = operation_watch.wait(op.pk, op.version, min(left, 1.0)) or op
        return operations.to_proto(op)

    @unary
    def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        op = self._find(request.name)
        if not op.done:
            raise FailedPrecondition(f"operation {request.name} is still running: cancel it first")
        op.delete()
        return empty_pb2.Empty()
