"""zstd in the batch CAS methods over a real socket (REAPI v2.3 Compressor): what a client
sends compressed is stored as the blob it stands for, what it accepts compressed comes back
compressed, and a bad compressed blob fails alone without storing anything."""

import os

import grpc
import pytest
import zstandard

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.google.rpc import status_pb2
from tests.reapi_client import Client, digest
from tests.servers import ReapiServer
from tests.storage_probe import stored_files
from tests.tenants import Persona

ZSTD, IDENTITY, DEFLATE = re_pb2.Compressor.ZSTD, re_pb2.Compressor.IDENTITY, re_pb2.Compressor.DEFLATE
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


@pytest.fixture
def client(external_server: ReapiServer, acme: Persona) -> Client:
    return Client(external_server.channel(), acme.pat())


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def upload(
    client: Client, *entries: tuple[re_pb2.Digest, bytes, re_pb2.Compressor.Value]
) -> list[status_pb2.Status]:
    request = re_pb2.BatchUpdateBlobsRequest(
        instance_name=client.instance,
        requests=[
            re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=data, compressor=compressor)
            for d, data, compressor in entries
        ],
    )
    return [r.status for r in client.cas.BatchUpdateBlobs(request, metadata=client.metadata).responses]


def read(client: Client, *wanted: re_pb2.Digest) -> list[re_pb2.BatchReadBlobsResponse.Response]:
    request = re_pb2.BatchReadBlobsRequest(
        instance_name=client.instance, digests=wanted, acceptable_compressors=[ZSTD]
    )
    return list(client.cas.BatchReadBlobs(request, metadata=client.metadata).responses)


def compressible() -> bytes:
    return os.urandom(16) + b"a build output line\n" * 5000


def test_capabilities_offer_zstd_for_batch_uploads(client: Client) -> None:
    caps = client.get_capabilities().cache_capabilities
    assert list(caps.supported_batch_update_compressors) == [ZSTD]
    assert list(caps.supported_compressors) == [ZSTD]


def test_a_compressed_upload_stores_the_blob_and_reads_come_back_as_asked(client: Client) -> None:
    text, noise = compressible(), os.urandom(100)
    statuses = upload(client, (digest(text), zstd(text), ZSTD), (digest(noise), zstd(noise), ZSTD))
    assert [s.code for s in statuses] == [0, 0]
    assert client.missing(digest(text), digest(noise)) == []
    # Stored as the blob itself: plain reads, batch and ByteStream, give the original bytes.
    assert [r.data for r in client.batch_read(digest(text), digest(noise)).responses] == [text, noise]
    assert client.read(digest(text)) == text

    packed, raw = read(client, digest(text), digest(noise))
    assert packed.compressor == ZSTD and len(packed.data) < len(text) // 10
    assert zstandard.ZstdDecompressor().decompress(packed.data) == text
    # Random bytes do not shrink: they come back as they are, and the response says so.
    assert raw.compressor == IDENTITY and raw.data == noise


def test_a_bad_compressed_blob_fails_alone_and_stores_nothing(client: Client) -> None:
    good, other = compressible(), compressible()
    claimed = b"ten bytes!"
    before = stored_files()
    statuses = upload(
        client,
        (digest(good), zstd(good), ZSTD),
        (digest(other), b"this is not a zstd frame", ZSTD),
        (digest(other), zstd(good), ZSTD),  # inflates to other bytes than its digest's
        (digest(claimed), zstd(bytes(8 * 1024 * 1024)), ZSTD),  # 8 MiB of zeros for 10 bytes
        (digest(claimed), claimed, DEFLATE),
    )
    assert [s.code for s in statuses] == [0] + [INVALID_ARGUMENT] * 4
    assert "not valid zstd" in statuses[1].message
    assert "data hashes to" in statuses[2].message, statuses[2]
    assert "got 11 bytes, the digest says 10" in statuses[3].message, statuses[3]  # read no further
    assert "compressor DEFLATE is not supported" in statuses[4].message
    assert client.missing(digest(good), digest(other), digest(claimed)) == [digest(other), digest(claimed)]
    assert len(stored_files() - before) == 1


def test_a_compressed_batch_that_inflates_past_the_limit_is_refused_whole(client: Client) -> None:
    limit = client.get_capabilities().cache_capabilities.max_batch_total_size_bytes
    blobs = [os.urandom(8) + bytes(limit // 2), os.urandom(8) + bytes(limit // 2)]
    before = stored_files()
    with pytest.raises(grpc.RpcError) as info:
        upload(client, *((digest(b), zstd(b), ZSTD) for b in blobs))  # a few KiB on the wire
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_batch_total_size_bytes" in (info.value.details() or "")
    assert stored_files() == before
