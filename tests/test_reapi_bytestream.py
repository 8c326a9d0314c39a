"""ByteStream over a real socket: chunked writes, ranged reads, resumes, bad resource names."""

import os
import threading
import uuid
from collections.abc import Iterator

import grpc
import pytest
import zstandard

from reapi.gen.google.bytestream import bytestream_pb2 as bs_pb2
from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer
from tests.support.storage_probe import stored_files
from tests.support.tenants import Persona

MIB = 1024 * 1024


@pytest.fixture
def client(external_server: ReapiServer, acme: Persona) -> Client:
    return Client(external_server.channel(), acme.pat(), instance=acme.slug)


def test_it_writes_in_chunks_and_reads_back_ranges(client: Client) -> None:
    data = os.urandom(5 * MIB + 123)
    assert client.write(data, chunk=64 * 1024) == len(data)
    d = digest(data)
    assert client.missing(d) == []
    assert client.read(d) == data
    assert client.read(d, offset=MIB, limit=1000) == data[MIB : MIB + 1000]
    assert client.read(d, offset=len(data)) == b""


def test_ranges_of_a_small_blob_read_back_as_asked(client: Client) -> None:
    # Small blobs are served whole from one `get` (reapi.cas.SMALL_READ_BYTES): the same ranges.
    data = os.urandom(3000)
    client.upload(data)
    d = digest(data)
    assert client.read(d) == data
    assert client.read(d, offset=1000) == data[1000:]
    assert client.read(d, offset=1000, limit=10) == data[1000:1010]
    assert client.read(d, offset=2990, limit=100) == data[2990:]
    assert client.read(d, offset=len(data)) == b""
    assert client.read(d, limit=1) == data[:1]


def test_a_read_beyond_the_end_is_out_of_range(client: Client) -> None:
    data = os.urandom(100)
    client.upload(data)
    with pytest.raises(grpc.RpcError) as info:
        client.read(digest(data), offset=101)
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(grpc.RpcError) as info:
        client.read(digest(data), offset=-1)
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_reading_a_missing_blob_is_not_found(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.read(digest(os.urandom(10)))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_writing_a_present_blob_ends_early_with_the_full_size(client: Client) -> None:
    data = os.urandom(3 * MIB)
    client.write(data)
    name = client.upload_resource(digest(data))
    sent = []

    def requests() -> Iterator[bs_pb2.WriteRequest]:
        for offset in range(0, len(data), MIB):
            sent.append(offset)
            yield bs_pb2.WriteRequest(
                resource_name=name,
                write_offset=offset,
                data=data[offset : offset + MIB],
                finish_write=offset + MIB >= len(data),
            )

    reply = client.bytestream.Write(requests(), metadata=client.metadata)
    assert reply.committed_size == len(data)


def test_a_digest_mismatch_at_finish_is_refused_and_nothing_is_stored(client: Client) -> None:
    data = os.urandom(2000)
    lie = digest(os.urandom(2000))
    before = stored_files()
    with pytest.raises(grpc.RpcError) as info:
        client.write(data, resource=client.upload_resource(lie))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert lie.hash in (info.value.details() or "")
    assert stored_files() == before
    assert client.missing(lie) == [lie]


def test_an_interrupted_upload_resumes_from_what_was_committed(client: Client) -> None:
    data = os.urandom(3 * MIB)
    d = digest(data)
    name = client.upload_resource(d, upload_id=str(uuid.uuid4()))

    def first_half() -> Iterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[:MIB])
        yield bs_pb2.WriteRequest(write_offset=MIB, data=data[MIB : 2 * MIB])

    with pytest.raises(grpc.RpcError) as info:
        client.bytestream.Write(first_half(), metadata=client.metadata)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "QueryWriteStatus" in (info.value.details() or "")
    status = client.bytestream.QueryWriteStatus(
        bs_pb2.QueryWriteStatusRequest(resource_name=name), metadata=client.metadata
    )
    assert (status.committed_size, status.complete) == (2 * MIB, False)
    assert client.missing(d) == [d]

    def rest() -> Iterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(
            resource_name=name, write_offset=2 * MIB, data=data[2 * MIB :], finish_write=True
        )

    assert client.bytestream.Write(rest(), metadata=client.metadata).committed_size == len(data)
    assert client.read(d) == data
    status = client.bytestream.QueryWriteStatus(
        bs_pb2.QueryWriteStatusRequest(resource_name=name), metadata=client.metadata
    )
    assert (status.committed_size, status.complete) == (len(data), True)


def test_a_whole_blob_in_one_message_replaces_an_abandoned_partial(client: Client) -> None:
    # Bazel sends a blob up to its chunk size as one message with finish_write: stored with no
    # partial, and one an earlier try of the same upload left is not kept as parked bytes.
    data = os.urandom(40 * 1024)
    d = digest(data)
    name = client.upload_resource(d, upload_id=str(uuid.uuid4()))

    def abandoned() -> Iterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[:1000])

    with pytest.raises(grpc.RpcError):
        client.bytestream.Write(abandoned(), metadata=client.metadata)
    assert [f for f in stored_files() if f.endswith(".part")]

    def whole() -> Iterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data, finish_write=True)

    assert client.bytestream.Write(whole(), metadata=client.metadata).committed_size == len(data)
    assert client.read(d) == data
    assert [f for f in stored_files() if f.endswith(".part")] == []


def test_one_message_longer_than_its_digest_is_refused_and_nothing_is_stored(client: Client) -> None:
    data = os.urandom(3000)
    short = digest(data[:2000])
    before = stored_files()

    def too_long() -> Iterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(
            resource_name=client.upload_resource(short), write_offset=0, data=data, finish_write=True
        )

    with pytest.raises(grpc.RpcError) as info:
        client.bytestream.Write(too_long(), metadata=client.metadata)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"/3000, not {short.hash}/2000" in (info.value.details() or "")
    assert stored_files() == before
    assert client.missing(short) == [short]


def test_a_resume_at_the_wrong_offset_is_refused(client: Client) -> None:
    data = os.urandom(1000)
    name = client.upload_resource(digest(data))

    def skip_ahead() -> Iterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(resource_name=name, write_offset=500, data=data[500:], finish_write=True)

    with pytest.raises(grpc.RpcError) as info:
        client.bytestream.Write(skip_ahead(), metadata=client.metadata)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "write_offset 500" in (info.value.details() or "")


def test_concurrent_writers_of_one_digest_both_succeed_and_leave_one_object(
    client: Client, acme: Persona
) -> None:
    data = os.urandom(4 * MIB)
    results: list[int] = []
    errors: list[Exception] = []

    def writer() -> None:
        try:
            results.append(client.write(data, chunk=256 * 1024))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [len(data)] * 4
    d = digest(data)
    assert client.read(d) == data
    matching = [f for f in stored_files() if f.endswith(d.hash)]
    assert matching == [f"{acme.slug}/cas/{d.hash[:2]}/{d.hash}"]


BAD_NAMES = [
    ("{i}/blobs/{h}/notanumber", "not a non-negative integer"),
    ("{i}/blobs/{h}/-5", "not a non-negative integer"),
    ("{i}/blobs/XYZ/5", "64 lowercase hex"),
    ("{i}/../blobs/{h}/5", "'..'"),
    ("{i}//blobs/{h}/5", "empty segment"),
    ("{i}/uploads/blobs/{h}/5", "reserved segment"),
    ("{i}/blobs/{h}", "not of the form"),
    ("{i}/compressed-blobs/lz4/{h}/5", "compressor 'lz4'"),
    ("{i}/blobs/{h}/5/extra", "trailing segments"),
]


@pytest.mark.parametrize(("template", "message"), BAD_NAMES)
def test_it_rejects_malformed_read_names(client: Client, template: str, message: str) -> None:
    name = template.format(i=client.instance, h="a" * 64)
    with pytest.raises(grpc.RpcError) as info:
        list(client.bytestream.Read(bs_pb2.ReadRequest(resource_name=name), metadata=client.metadata))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


BAD_UPLOADS = [
    ("{i}/uploads/{u}/blobs/{h}/-1", "not a non-negative integer"),
    ("{i}/uploads/{u}/blobs/../{h}/5", "'..'"),
    ("{i}//uploads/{u}/blobs/{h}/5", "empty segment"),
    ("{i}/actions/uploads/{u}/blobs/{h}/5", "reserved segment"),
    ("{i}/uploads/{u}/blobs/{H}/5", "64 lowercase hex"),
    ("{i}/uploads/{u}/blobs/{h}/5 ", "not a non-negative integer"),
    ("{i}/blobs/{h}/5", "uploads/UUID/blobs"),
    ("{i}/uploads/../blobs/{h}/5", "'..'"),
]


@pytest.mark.parametrize(("template", "message"), BAD_UPLOADS)
def test_it_rejects_malformed_write_names_and_writes_nothing(
    client: Client, template: str, message: str
) -> None:
    data = b"hello"
    name = template.format(
        i=client.instance, u=uuid.uuid4(), h=digest(data).hash, H=digest(data).hash.upper()
    )
    before = stored_files()

    def requests() -> Iterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data, finish_write=True)

    with pytest.raises(grpc.RpcError) as info:
        client.bytestream.Write(requests(), metadata=client.metadata)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")
    assert stored_files() == before


def test_another_tenants_instance_in_a_resource_name_is_denied(
    external_server: ReapiServer, acme: Persona, globex: Persona
) -> None:
    charlie = Client(external_server.channel(), globex.pat(), instance=acme.slug)
    data = os.urandom(100)
    with pytest.raises(grpc.RpcError) as info:
        charlie.write(data)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as info:
        charlie.read(digest(data))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_it_reads_and_writes_zstd_compressed_blobs(client: Client) -> None:
    data = b"compressible " * 50000
    d = digest(data)
    compressed = zstandard.ZstdCompressor().compress(data)
    name = f"{client.instance}/uploads/{uuid.uuid4()}/compressed-blobs/zstd/{d.hash}/{d.size_bytes}"

    def requests() -> Iterator[bs_pb2.WriteRequest]:
        half = len(compressed) // 2
        yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=compressed[:half])
        yield bs_pb2.WriteRequest(write_offset=half, data=compressed[half:], finish_write=True)

    client.bytestream.Write(requests(), metadata=client.metadata)
    assert client.read(d) == data
    chunks = client.bytestream.Read(
        bs_pb2.ReadRequest(resource_name=f"{client.instance}/compressed-blobs/zstd/{d.hash}/{d.size_bytes}"),
        metadata=client.metadata,
    )
    wire = b"".join(c.data for c in chunks)
    assert len(wire) < len(data) // 10
    assert zstandard.ZstdDecompressor().decompressobj().decompress(wire) == data


def test_corrupt_zstd_is_refused(client: Client) -> None:
    data = os.urandom(1000)
    d = digest(data)
    name = f"{client.instance}/uploads/{uuid.uuid4()}/compressed-blobs/zstd/{d.hash}/{d.size_bytes}"

    def requests() -> Iterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(
            resource_name=name, write_offset=0, data=b"not zstd at all", finish_write=True
        )

    with pytest.raises(grpc.RpcError) as info:
        client.bytestream.Write(requests(), metadata=client.metadata)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.missing(d) == [d]
