"""gRPC edge of the Execution service: Execute and WaitExecution stream operation updates.

Execute streams QUEUED, EXECUTING and COMPLETED (REAPI ExecutionStage) as the operation row
changes; a client that reconnects with WaitExecution follows the same operation to its end.
The core, free of gRPC, is reapi/scheduler.py (check, route, answer from the cache or queue),
reapi/operations.py (an operation's life) and reapi/operation_watch.py (waking waiting streams).
"""

import time
from collections.abc import Iterator

import grpc

from reapi import db_threads, digests, invocations, operation_watch, operations, request_metadata, scheduler
from reapi.call_context import principal, writer_of
from reapi.cas_service import check_digest_function
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from reapi.gen.google.longrunning import operations_pb2
from reapi.grpc_edge import streaming
from workers import pools
from workers.models import Operation

# An idle stream gets the unchanged operation again this often, so proxies and clients that
# watch for silence keep it open during a long action.
KEEPALIVE_SECONDS = 30.0
CHECK_SECONDS = 1.0


def follow(op: Operation, instance: str, context: grpc.ServicerContext) -> Iterator[operations_pb2.Operation]:
    """Yield the operation now and on every change, until it is done or the client leaves.

    The watcher reads the changed rows for this thread, which holds no database connection
    (reapi/db_threads.py): streams can outnumber the connections a database allows.
    """
    yield operations.to_proto(op, instance)
    sent_at = time.monotonic()
    if op.done:
        return
    while True:
        # Short waits, so a stream whose client left (or a server stopping) ends promptly.
        newer = operation_watch.wait(op.pk, op.version, CHECK_SECONDS)
        if newer is not None:
            op = newer
        elif not context.is_active():
            return
        elif time.monotonic() - sent_at < KEEPALIVE_SECONDS:
            continue
        yield operations.to_proto(op, instance)  # the change, or the same again as a keep-alive
        sent_at = time.monotonic()
        if op.done:
            return


class ExecutionService(re_grpc.ExecutionServicer):
    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        pools.configured(cluster)  # a bad REAPI_POOLS_* fails at start, not per request

    @streaming
    def Execute(
        self, request: re_pb2.ExecuteRequest, context: grpc.ServicerContext
    ) -> Iterator[operations_pb2.Operation]:
        who = principal()
        who.check_instance(request.instance_name)
        check_digest_function(request.digest_function)
        action = digests.check(request.action_digest.hash, request.action_digest.size_bytes)
        writer = writer_of(who, self.cluster, context)
        op = db_threads.run(scheduler.submit, self.cluster, who, action, request.skip_cache_lookup, writer)
        if not op.cached:
            meta = request_metadata.of_call(context)
            invocations.add(who, self.cluster, meta, invocations.EXECUTED)
        yield from follow(op, request.instance_name, context)

    @streaming
    def WaitExecution(
        self, request: re_pb2.WaitExecutionRequest, context: grpc.ServicerContext
    ) -> Iterator[operations_pb2.Operation]:
        who = principal()
        op = db_threads.run(operations.find, who.tenant_id, self.cluster, request.name)
        yield from follow(op, _instance_of(request.name), context)


def _instance_of(name: str) -> str:
    head, sep, _ = name.rpartition("/operations/")
    return head if sep else ""
