"""A bare grpcio REAPI server for calibration: it hashes what it receives and keeps blobs and
action results in dicts, with no auth and no storage.

What it reaches on a given run is about what Python's gRPC and this machine allow at that
moment (its figures stand beside the targets): the bench prints it
beside ours so a slow run on a busy machine reads as such.

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
from reapi.gen.google.bytestream import bytestream_pb2 as bs_pb2
from reapi.gen.google.bytestream import bytestream_pb2_grpc as bs_grpc
from reapi.gen.google.rpc import status_pb2

CHUNK = 1024 * 1024
blobs: dict[str, bytes] = {}
results: dict[str, re_pb2.ActionResult] = {}


class Capabilities(re_grpc.CapabilitiesServicer):
    def GetCapabilities(
        self, request: re_pb2.GetCapabilitiesRequest, context: object
    ) -> re_pb2.ServerCapabilities:
        return re_pb2.ServerCapabilities()


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
                for d in request.digests
            ]
        )


class ActionCache(re_grpc.ActionCacheServicer):
    def GetActionResult(self, request: re_pb2.GetActionResultRequest, context: object) -> re_pb2.ActionResult:
        result = results[request.action_digest.hash]
        if any(f.digest.hash not in blobs for f in result.output_files):
            raise KeyError("dangling")
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

    def Read(self, request: bs_pb2.ReadRequest, context: object) -> Iterator[bs_pb2.ReadResponse]:
        data = blobs[request.resource_name.split("/")[-2]]
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
