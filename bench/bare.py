"""A bare grpcio REAPI server for calibration: it hashes what it receives and keeps blobs and
action results in dicts, with no auth and no storage.

What it reaches on a given run is about what Python's gRPC and this machine allow at that
moment (its figures stand beside the targets): the bench prints it
beside ours so a slow run on a busy machine reads as such. It answers Capabilities and a miss
the way Bazel expects (NOT_FOUND), so bench/bazel.py can point a real Bazel at it.

    python bench/bare.py 127.0.0.1:PORT
"""

import hashlib
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from reapi.gen.build.bazel.semver import semver_pb2
from reapi.gen.google.bytestream import bytestream_pb2 as bs_pb2
from reapi.gen.google.bytestream import bytestream_pb2_grpc as bs_grpc
from reapi.gen.google.rpc import status_pb2

CHUNK = 1024 * 1024
blobs: dict[str, bytes] = {}
results: dict[str, re_pb2.ActionResult] = {}


class Capabilities(re_grpc.CapabilitiesServicer):
    # Bazel refuses a cache whose capabilities do not name its digest function and an API
    # version range it speaks, and only uploads results when updates are enabled.
    CAPS = re_pb2.ServerCapabilities(
        cache_capabilities=re_pb2.CacheCapabilities(
            digest_functions=[re_pb2.DigestFunction.SHA256],
            action_cache_update_capabilities=re_pb2.ActionCacheUpdateCapabilities(update_enabled=True),
            max_batch_total_size_bytes=4 * CHUNK,
        ),
        low_api_version=semver_pb2.SemVer(major=2, minor=0),
        high_api_version=semver_pb2.SemVer(major=2, minor=0),
    )

    def GetCapabilities(
        self, request: re_pb2.GetCapabilitiesRequest, context: object
    ) -> re_pb2.ServerCapabilities:
        return self.CAPS


class Cas(re_grpc.ContentAddressableStorageServicer):
    def FindMissingBlobs(
        self, request: re_pb2.FindMissingBlobsRequest, context: object
    ) -> re_pb2.FindMissingBlobsResponse:
        return re_pb2.FindMissingBlobsResponse(
            missing_blob_digests=[d for d in request.blob_digests if d.hash not in blobs]
        )

    def BatchUpdateBlobs(
        self, request: re_pb2.BatchUpdateBlobsRequest, context: object
    ) -> re_pb2.BatchUpdateBlobsResponse:
        out = []
        for r in request.requests:
            data = r.data
            ok = hashlib.sha256(data).hexdigest() == r.digest.hash
            if ok:
                blobs[r.digest.hash] = data
            out.append(
                re_pb2.BatchUpdateBlobsResponse.Response(
                    digest=r.digest, status=status_pb2.Status(code=0 if ok else 3)
                )
            )
        return re_pb2.BatchUpdateBlobsResponse(responses=out)

    def BatchReadBlobs(
        self, request: re_pb2.BatchReadBlobsRequest, context: object
    ) -> re_pb2.BatchReadBlobsResponse:
        return re_pb2.BatchReadBlobsResponse(
            responses=[
                re_pb2.BatchReadBlobsResponse.Response(
                    digest=d, data=blobs[d.hash], status=status_pb2.Status()
                )
                if d.hash in blobs
                else re_pb2.BatchReadBlobsResponse.Response(digest=d, status=status_pb2.Status(code=5))
                for d in request.digests
            ]
        )


class ActionCache(re_grpc.ActionCacheServicer):
    def GetActionResult(
        self, request: re_pb2.GetActionResultRequest, context: grpc.ServicerContext
    ) -> re_pb2.ActionResult:
        # REAPI GetActionResult: a miss, or a result whose outputs are gone, is NOT_FOUND.
        result = results.get(request.action_digest.hash)
        if result is None or any(f.digest.hash not in blobs for f in result.output_files):
            context.abort(grpc.StatusCode.NOT_FOUND, "no such action result")
        return result

    def UpdateActionResult(
        self, request: re_pb2.UpdateActionResultRequest, context: object
    ) -> re_pb2.ActionResult:
        results[request.action_digest.hash] = request.action_result
        return request.action_result


class ByteStream(bs_grpc.ByteStreamServicer):
    def Write(self, requests: Iterator[bs_pb2.WriteRequest], context: object) -> bs_pb2.WriteResponse:
        hasher = hashlib.sha256()
        parts = []
        for r in requests:
            hasher.update(r.data)
            parts.append(r.data)
        data = b"".join(parts)
        blobs[hasher.hexdigest()] = data
        return bs_pb2.WriteResponse(committed_size=len(data))

    def Read(
        self, request: bs_pb2.ReadRequest, context: grpc.ServicerContext
    ) -> Iterator[bs_pb2.ReadResponse]:
        data = blobs.get(request.resource_name.split("/")[-2])
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such blob")
        for offset in range(0, len(data), CHUNK):
            yield bs_pb2.ReadResponse(data=data[offset : offset + CHUNK])


def main() -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        options=[("grpc.max_receive_message_length", 8 * CHUNK)],
    )
    re_grpc.add_CapabilitiesServicer_to_server(Capabilities(), server)
    re_grpc.add_ContentAddressableStorageServicer_to_server(Cas(), server)
    re_grpc.add_ActionCacheServicer_to_server(ActionCache(), server)
    bs_grpc.add_ByteStreamServicer_to_server(ByteStream(), server)
    server.add_insecure_port(sys.argv[1])
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
