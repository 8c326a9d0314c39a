"""gRPC edge of the Capabilities service: what this endpoint offers this credential."""

import grpc

from reapi import clusters, messages
from reapi.call_context import principal
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from reapi.gen.build.bazel.semver import semver_pb2
from reapi.grpc_edge import unary

Compressor = re_pb2.Compressor


class CapabilitiesService(re_grpc.CapabilitiesServicer):
    def __init__(self, cluster: str, exec_enabled: bool) -> None:
        self.cluster = cluster
        self.exec_enabled = exec_enabled

    @unary
    def GetCapabilities(
        self, request: re_pb2.GetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> re_pb2.ServerCapabilities:
        who = principal()
        who.check_instance(request.instance_name)
        # A read-only credential is told it may not update the action cache, so Bazel does not
        # try and fail (a read-only token cannot poison the cache: docs/architecture.md, "Contracts").
        can_update = "ac:write" in who.scopes
        caps = re_pb2.ServerCapabilities(
            cache_capabilities=re_pb2.CacheCapabilities(
                digest_functions=[re_pb2.DigestFunction.SHA256],
                action_cache_update_capabilities=re_pb2.ActionCacheUpdateCapabilities(
                    update_enabled=can_update
                ),
                max_batch_total_size_bytes=clusters.max_batch_bytes(),
                # What UpdateActionResult and GetTree check symlink targets against.
                symlink_absolute_path_strategy=messages.SYMLINK_ABSOLUTE_PATH_STRATEGY,
                supported_compressors=[Compressor.ZSTD],
                supported_batch_update_compressors=[Compressor.ZSTD],
            ),
            low_api_version=semver_pb2.SemVer(major=2, minor=0),
            high_api_version=semver_pb2.SemVer(major=2, minor=3),
        )
        if self.exec_enabled:
            caps.execution_capabilities.CopyFrom(
                re_pb2.ExecutionCapabilities(
                    digest_function=re_pb2.DigestFunction.SHA256,
                    digest_functions=[re_pb2.DigestFunction.SHA256],
                    exec_enabled="execute" in who.scopes,
                )
            )
        return caps
