"""gRPC edge of the ActionCache service."""

import grpc

from reapi import clusters, conflicts, digests, invocations, metrics, provenance, request_metadata, usage
from reapi.auth import Principal
from reapi.call_context import principal, writer_of
from reapi.cas_service import check_digest_function
from reapi.digests import Digest
from reapi.errors import NotFound
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from reapi.grpc_edge import unary


class ActionCacheService(re_grpc.ActionCacheServicer):
    def __init__(self, cluster: str) -> None:
        self.cluster = cluster

    def _call(
        self, request: re_pb2.GetActionResultRequest | re_pb2.UpdateActionResultRequest
    ) -> tuple[Principal, Digest, clusters.Backend]:
        who = principal()
        who.check_instance(request.instance_name)
        check_digest_function(request.digest_function)
        action = digests.check(request.action_digest.hash, request.action_digest.size_bytes)
        return who, action, clusters.for_call(self.cluster, who.cache_mode)

    @unary
    def GetActionResult(
        self, request: re_pb2.GetActionResultRequest, context: grpc.ServicerContext
    ) -> re_pb2.ActionResult:
        who, action, backend = self._call(request)
        try:
            result = backend.action_cache.get(
                who.tenant,
                action,
                inline_stdout=request.inline_stdout,
                inline_stderr=request.inline_stderr,
                inline_files=frozenset(request.inline_output_files),
                threshold=who.ci_threshold(self.cluster),
            )
        except NotFound:
            usage.add(who, self.cluster, usage.MISSES)
            meta = request_metadata.of_call(context)
            invocations.miss(who, self.cluster, backend.alias, meta, action)
            metrics.action_cache(self.cluster, hit=False)
            raise
        usage.add(who, self.cluster, usage.HITS)
        metrics.action_cache(self.cluster, hit=True)
        invocations.add(who, self.cluster, request_metadata.of_call(context), invocations.HITS)
        return result

    @unary
    def UpdateActionResult(
        self, request: re_pb2.UpdateActionResultRequest, context: grpc.ServicerContext
    ) -> re_pb2.ActionResult:
        who, action, backend = self._call(request)
        writer = writer_of(who, self.cluster, context)
        return backend.action_cache.put(
            who.tenant,
            action,
            request.action_result,
            record=lambda: provenance.record(backend.alias, who.tenant, action, writer),
            author=writer.author,
            on_conflict=conflicts.recorder(who.tenant_id, action, who.username, who.token_prefix),
        )
