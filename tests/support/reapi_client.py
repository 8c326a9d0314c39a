"""A small REAPI client for tests: stubs on a real channel, with the caller's credential."""

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from reapi.gen.google.bytestream import bytestream_pb2 as bs_pb2
from reapi.gen.google.bytestream import bytestream_pb2_grpc as bs_grpc


def digest(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


@dataclass
class Client:
    channel: grpc.Channel
    token: str | None
    instance: str = ""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-aspect", self.token),) if self.token else ()

    @property
    def cas(self) -> re_grpc.ContentAddressableStorageStub:
        return re_grpc.ContentAddressableStorageStub(self.channel)

    @property
    def ac(self) -> re_grpc.ActionCacheStub:
        return re_grpc.ActionCacheStub(self.channel)

    @property
    def bytestream(self) -> bs_grpc.ByteStreamStub:
        return bs_grpc.ByteStreamStub(self.channel)

    @property
    def capabilities(self) -> re_grpc.CapabilitiesStub:
        return re_grpc.CapabilitiesStub(self.channel)

    def get_capabilities(self) -> re_pb2.ServerCapabilities:
        return self.capabilities.GetCapabilities(
            re_pb2.GetCapabilitiesRequest(instance_name=self.instance), metadata=self.metadata
        )

    def upload(self, *blobs: bytes) -> re_pb2.BatchUpdateBlobsResponse:
        request = re_pb2.BatchUpdateBlobsRequest(
            instance_name=self.instance,
            requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b) for b in blobs],
        )
        return self.cas.BatchUpdateBlobs(request, metadata=self.metadata)

    def missing(self, *digests: re_pb2.Digest) -> list[re_pb2.Digest]:
        reply = self.cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(instance_name=self.instance, blob_digests=digests),
            metadata=self.metadata,
        )
        return list(reply.missing_blob_digests)

    def batch_read(self, *digests: re_pb2.Digest) -> re_pb2.BatchReadBlobsResponse:
        return self.cas.BatchReadBlobs(
            re_pb2.BatchReadBlobsRequest(instance_name=self.instance, digests=digests),
            metadata=self.metadata,
        )

    def resource(self, d: re_pb2.Digest) -> str:
        prefix = f"{self.instance}/" if self.instance else ""
        return f"{prefix}blobs/{d.hash}/{d.size_bytes}"

    def upload_resource(self, d: re_pb2.Digest, upload_id: str | None = None) -> str:
        prefix = f"{self.instance}/" if self.instance else ""
        return f"{prefix}uploads/{upload_id or uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"

    def write(self, data: bytes, chunk: int = 1 << 20, resource: str | None = None) -> int:
        name = resource or self.upload_resource(digest(data))

        def requests() -> Iterator[bs_pb2.WriteRequest]:
            offset = 0
            while True:
                piece = data[offset : offset + chunk]
                last = offset + len(piece) >= len(data)
                yield bs_pb2.WriteRequest(
                    resource_name=name if offset == 0 else "",
                    write_offset=offset,
                    data=piece,
                    finish_write=last,
                )
                offset += len(piece)
                if last:
                    return

        return self.bytestream.Write(requests(), metadata=self.metadata).committed_size

    def read(self, d: re_pb2.Digest, offset: int = 0, limit: int = 0) -> bytes:
        chunks = self.bytestream.Read(
            bs_pb2.ReadRequest(resource_name=self.resource(d), read_offset=offset, read_limit=limit),
            metadata=self.metadata,
        )
        return b"".join(c.data for c in chunks)

    def get_action_result(self, action: re_pb2.Digest) -> re_pb2.ActionResult:
        return self.ac.GetActionResult(
            re_pb2.GetActionResultRequest(instance_name=self.instance, action_digest=action),
            metadata=self.metadata,
        )

    def update_action_result(self, action: re_pb2.Digest, result: re_pb2.ActionResult) -> re_pb2.ActionResult:
        return self.ac.UpdateActionResult(
            re_pb2.UpdateActionResultRequest(
                instance_name=self.instance, action_digest=action, action_result=result
            ),
            metadata=self.metadata,
        )
