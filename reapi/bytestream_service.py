"""gRPC edge of ByteStream, with REAPI's resource names (reapi/digests.py)."""

from collections.abc import Iterator

import grpc
import zstandard

from reapi import clusters, compression, digests, faults, invocations, metrics, request_metadata, usage
from reapi.call_context import principal
from reapi.cas import Upload
from reapi.errors import InvalidArgument, ReapiError
from reapi.gen.google.bytestream import bytestream_pb2 as bs_pb2
from reapi.gen.google.bytestream import bytestream_pb2_grpc as bs_grpc
from reapi.grpc_edge import abort, streaming, unary


class ByteStreamService(bs_grpc.ByteStreamServicer):
    def __init__(self, cluster: str) -> None:
        self.cluster = cluster

    def _backend(self, instance: str) -> tuple[str, clusters.Backend]:
        who = principal()
        who.check_instance(instance)
        return who.tenant, clusters.for_call(self.cluster, who.cache_mode)

    @streaming
    def Read(
        self, request: bs_pb2.ReadRequest, context: grpc.ServicerContext
    ) -> Iterator[bs_pb2.ReadResponse]:
        name = digests.parse_read(request.resource_name)
        tenant, backend = self._backend(name.instance)
        # Counted once at the end (a cancelled read counts what was sent); the principal is
        # read now because the stream may be closed from another thread.
        who, served = principal(), 0
        try:
            if name.compressor:
                # REAPI: compressed reads take offsets in the uncompressed blob and no limit.
                if request.read_limit:
                    raise InvalidArgument("read_limit must be 0 for compressed-blobs reads")
                chunks = backend.cas.read(tenant, name.digest, request.read_offset, 0)
                compressor = zstandard.ZstdCompressor(level=1).compressobj()
                for chunk in chunks:
                    out = compressor.compress(chunk)
                    if out:
                        served += len(out)
                        yield bs_pb2.ReadResponse(data=out)
                out = compressor.flush()
                served += len(out)
                yield bs_pb2.ReadResponse(data=out)
                return
            for chunk in backend.cas.read(tenant, name.digest, request.read_offset, request.read_limit):
                served += len(chunk)
                yield bs_pb2.ReadResponse(data=chunk)
        finally:
            usage.add(who, self.cluster, usage.SERVED, served)
            meta = request_metadata.of_call(context)
            invocations.add(who, self.cluster, meta, invocations.DOWN, served)
            metrics.cas(self.cluster, "read", served)

    def Write(
        self, request_iterator: Iterator[bs_pb2.WriteRequest], context: grpc.ServicerContext
    ) -> bs_pb2.WriteResponse:
        upload: Upload | None = None
        doing = "Write"  # for the log, should storage fail
        try:
            first = next(request_iterator, None)
            if first is None:
                raise InvalidArgument("Write stream carried no request")
            name = digests.parse_write(first.resource_name)
            tenant, backend = self._backend(name.instance)
            doing = f"Write of {name.digest} for {tenant} into {backend.store!r}"
            if backend.cas.contains(tenant, name.digest):
                # REAPI: a blob already present ends the upload at once; compressed uploads
                # report -1, plain ones the full size.
                return bs_pb2.WriteResponse(committed_size=-1 if name.compressor else name.digest.size)
            if name.compressor:
                response = self._write_compressed(backend, tenant, name, first, request_iterator)
                self._count_up(context, name.digest.size)
                return response
            if first.finish_write and first.write_offset == 0:
                backend.cas.write_whole(tenant, name.digest, first.data, name.upload_id)
                usage.add(principal(), self.cluster, usage.STORED, name.digest.size)
                self._count_up(context, name.digest.size)
                metrics.cas(self.cluster, "write", name.digest.size)
                return bs_pb2.WriteResponse(committed_size=name.digest.size)
            upload = backend.cas.open_upload(tenant, name.upload_id, name.digest, first.write_offset)
            request = first
            while True:
                if request.resource_name and request.resource_name != first.resource_name:
                    raise InvalidArgument("resource_name changed in the middle of a Write")
                upload.append(request.write_offset, request.data)
                if request.finish_write:
                    committed = upload.finish()
                    upload = None
                    usage.add(principal(), self.cluster, usage.STORED, name.digest.size)
                    self._count_up(context, name.digest.size)
                    metrics.cas(self.cluster, "write", name.digest.size)
                    return bs_pb2.WriteResponse(committed_size=committed)
                following = next(request_iterator, None)
                if following is None:
                    upload.suspend()
                    upload = None
                    raise InvalidArgument(
                        "Write stream ended without finish_write; what arrived is kept, "
                        "resume with QueryWriteStatus"
                    )
                request = following
        except ReapiError as err:
            if upload is not None:
                upload.discard()
            abort(context, err)
        except grpc.RpcError:
            # The client went away (the request iterator raises this): keep the bytes for a
            # resume.
            if upload is not None:
                upload.suspend()
            raise
        except Exception as exc:
            # Storage failed under the write (a full or read-only disk, an unreachable
            # bucket): what arrived goes, which gives the space back on a full disk.
            if upload is not None:
                upload.discard()
            abort(context, faults.as_error(exc, doing))
        except BaseException:
            # The server is stopping: keep the bytes for a resume.
            if upload is not None:
                upload.suspend()
            raise

    def _count_up(self, context: grpc.ServicerContext, size: int) -> None:
        meta = request_metadata.of_call(context)
        invocations.add(principal(), self.cluster, meta, invocations.UP, size)

    def _write_compressed(
        self,
        backend: clusters.Backend,
        tenant: str,
        name: digests.ResourceName,
        first: bs_pb2.WriteRequest,
        rest: Iterator[bs_pb2.WriteRequest],
    ) -> bs_pb2.WriteResponse:
        if first.write_offset != 0:
            raise InvalidArgument("compressed uploads cannot resume: start at write_offset 0")
        received = 0

        def pieces() -> Iterator[bytes]:
            # Taken one request at a time as the decoder asks for more, never read ahead.
            nonlocal received
            request = first
            while True:
                if request.resource_name and request.resource_name != first.resource_name:
                    raise InvalidArgument("resource_name changed in the middle of a Write")
                data = request.data
                received += len(data)
                yield data
                if request.finish_write:
                    return
                following = next(rest, None)
                if following is None:
                    raise InvalidArgument("compressed Write stream ended without finish_write")
                request = following

        upload = backend.cas.open_upload(tenant, name.upload_id + ".zstd", name.digest, 0)
        try:
            for chunk in compression.inflate(name.digest, pieces()):
                upload.append(upload.committed, chunk)
            upload.finish()
        except BaseException:
            # A compressed upload cannot resume, so nothing of it is worth keeping.
            upload.discard()
            raise
        usage.add(principal(), self.cluster, usage.STORED, name.digest.size)
        metrics.cas(self.cluster, "write", name.digest.size)
        # ByteStream offsets count the bytes of the stream written: here, compressed bytes.
        return bs_pb2.WriteResponse(committed_size=received)

    @unary
    def QueryWriteStatus(
        self, request: bs_pb2.QueryWriteStatusRequest, context: grpc.ServicerContext
    ) -> bs_pb2.QueryWriteStatusResponse:
        name = digests.parse_write(request.resource_name)
        tenant, backend = self._backend(name.instance)
        state = backend.cas.write_state(tenant, name.upload_id, name.digest)
        return bs_pb2.QueryWriteStatusResponse(committed_size=state.committed, complete=state.complete)
