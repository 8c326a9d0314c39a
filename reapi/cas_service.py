"""gRPC edge of the ContentAddressableStorage service."""

from collections.abc import Iterator
from typing import Any

import grpc

from reapi import clusters, compression, digests, invocations, metrics, request_metadata, usage
from reapi.call_context import principal
from reapi.digests import Digest
from reapi.errors import InvalidArgument, ReapiError
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from reapi.grpc_edge import rpc_status, streaming, unary

SHA256_FUNCTIONS = (re_pb2.DigestFunction.UNKNOWN, re_pb2.DigestFunction.SHA256)
HEX_DIGITS = b"0123456789abcdef"


def enum_name(enum: Any, value: int) -> str:
    """The name of a proto enum value, or the number a newer client sent."""
    return str(enum.Name(value)) if value in enum.values() else str(value)


def check_digest_function(value: int) -> None:
    if value not in SHA256_FUNCTIONS:
        name = enum_name(re_pb2.DigestFunction.Value, value)
        raise InvalidArgument(f"digest function {name} is not supported; this server uses SHA256")


def check_all(hashes: list[str], sizes: list[int]) -> None:
    """Validate many digests at once (FindMissingBlobs sends 10,000); digests.check names the
    first bad one when the quick test fails."""
    if (
        set(map(len, hashes)) - {64}
        or "".join(hashes).encode().translate(None, HEX_DIGITS)
        or (sizes and (min(sizes) < 0 or max(sizes) > digests.MAX_BLOB_BYTES))
    ):
        for h, size in zip(hashes, sizes, strict=True):
            digests.check(h, size)


def digest_or_error(d: re_pb2.Digest) -> Digest | ReapiError:
    try:
        return digests.check(d.hash, d.size_bytes)
    except ReapiError as exc:
        return exc


def inflate(digest: Digest | ReapiError, compressor: int, data: bytes) -> tuple[Digest | ReapiError, bytes]:
    """A compressed batch blob's digest and uncompressed bytes, or the error that refuses it."""
    if isinstance(digest, ReapiError):
        return digest, b""
    if compressor != re_pb2.Compressor.ZSTD:
        name = enum_name(re_pb2.Compressor.Value, compressor)
        return InvalidArgument(f"compressor {name} is not supported in batches; use IDENTITY or ZSTD"), b""
    try:
        return digest, compression.decompress(data, digest)
    except InvalidArgument as exc:
        return exc, b""


class CasService(re_grpc.ContentAddressableStorageServicer):
    def __init__(self, cluster: str) -> None:
        self.cluster = cluster

    def _call(self, instance_name: str, digest_function: int) -> tuple[str, clusters.Backend]:
        who = principal()
        who.check_instance(instance_name)
        check_digest_function(digest_function)
        return who.tenant, clusters.for_call(self.cluster, who.cache_mode)

    @unary
    def FindMissingBlobs(
        self, request: re_pb2.FindMissingBlobsRequest, context: grpc.ServicerContext
    ) -> re_pb2.FindMissingBlobsResponse:
        tenant, backend = self._call(request.instance_name, request.digest_function)
        # One list of the request's digests: indexing the repeated field costs twice as much.
        wanted = list(request.blob_digests)
        hashes = [d.hash for d in wanted]
        sizes = [d.size_bytes for d in wanted]
        check_all(hashes, sizes)
        missing = backend.cas.find_missing_hashes(tenant, hashes, sizes)
        metrics.find_missing(self.cluster, len(wanted), len(missing))
        return re_pb2.FindMissingBlobsResponse(missing_blob_digests=[wanted[i] for i in missing])

    @unary
    def BatchUpdateBlobs(
        self, request: re_pb2.BatchUpdateBlobsRequest, context: grpc.ServicerContext
    ) -> re_pb2.BatchUpdateBlobsResponse:
        tenant, backend = self._call(request.instance_name, request.digest_function)
        items: list[tuple[Digest | ReapiError, bytes]] = []
        sent = []
        inflated = 0
        for r in request.requests:
            # Each read of a bytes or message field makes a new object: read each once.
            sent.append(d := r.digest)
            if r.compressor == re_pb2.Compressor.IDENTITY:
                items.append((digest_or_error(d), r.data))
                continue
            digest = digest_or_error(d)
            if r.compressor == re_pb2.Compressor.ZSTD and isinstance(digest, Digest):
                # The batch limit is on blob sizes, not on the compressed bytes that carried
                # them, and a blob inflates to at most its digest's size: checked before it
                # is inflated, so a batch of bombs never holds more than the limit in memory.
                # (What came uncompressed is bounded by the message size limit already.)
                backend.cas.check_batch_size(inflated + digest.size, "update")
            items.append(item := inflate(digest, r.compressor, r.data))
            inflated += len(item[1])
        results = backend.cas.batch_update(tenant, items)
        stored = sum(len(data) for (_, data), err in zip(items, results, strict=True) if err is None)
        usage.add(principal(), self.cluster, usage.STORED, stored)
        meta = request_metadata.of_call(context)
        invocations.add(principal(), self.cluster, meta, invocations.UP, stored)
        metrics.cas(self.cluster, "write", stored, results.count(None))
        ok = rpc_status(None)
        return re_pb2.BatchUpdateBlobsResponse(
            responses=[
                re_pb2.BatchUpdateBlobsResponse.Response(
                    digest=d, status=ok if err is None else rpc_status(err)
                )
                for d, err in zip(sent, results, strict=True)
            ]
        )

    @unary
    def BatchReadBlobs(
        self, request: re_pb2.BatchReadBlobsRequest, context: grpc.ServicerContext
    ) -> re_pb2.BatchReadBlobsResponse:
        tenant, backend = self._call(request.instance_name, request.digest_function)
        zstd = re_pb2.Compressor.ZSTD in request.acceptable_compressors
        wanted = list(request.digests)
        results = backend.cas.batch_read(tenant, [digest_or_error(d) for d in wanted])
        responses = []
        served = failed = 0
        ok = rpc_status(None)
        for d, result in zip(wanted, results, strict=True):
            if isinstance(result, ReapiError):
                failed += 1
                responses.append(re_pb2.BatchReadBlobsResponse.Response(digest=d, status=rpc_status(result)))
            elif zstd and (packed := compression.compress_if_smaller(result)) is not None:
                served += len(packed)
                responses.append(
                    re_pb2.BatchReadBlobsResponse.Response(
                        digest=d, data=packed, compressor=re_pb2.Compressor.ZSTD, status=ok
                    )
                )
            else:
                served += len(result)
                responses.append(re_pb2.BatchReadBlobsResponse.Response(digest=d, data=result, status=ok))
        usage.add(principal(), self.cluster, usage.SERVED, served)
        meta = request_metadata.of_call(context)
        invocations.add(principal(), self.cluster, meta, invocations.DOWN, served)
        metrics.cas(self.cluster, "read", served, len(results) - failed)
        return re_pb2.BatchReadBlobsResponse(responses=responses)

    @streaming
    def GetTree(
        self, request: re_pb2.GetTreeRequest, context: grpc.ServicerContext
    ) -> Iterator[re_pb2.GetTreeResponse]:
        tenant, backend = self._call(request.instance_name, request.digest_function)
        root = digests.check(request.root_digest.hash, request.root_digest.size_bytes)
        token = request.page_token
        while True:
            page, token = backend.cas.get_tree(tenant, root, request.page_size, token)
            yield re_pb2.GetTreeResponse(directories=page, next_page_token=token)
            # With an explicit page size the client pages itself; otherwise stream it all.
            if not token or request.page_size:
                return
