"""zstd over a real socket (REAPI v2.3 Compressor): what a client sends compressed is stored
as the blob it stands for, what it accepts compressed comes back compressed, a bad compressed
blob fails alone without storing anything, and a frame that inflates past its digest's size
is refused without being inflated (the server's peak memory is read from /proc)."""

import functools
import os
import uuid
from collections.abc import Iterator

import grpc
import pytest
import zstandard

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.google.bytestream import bytestream_pb2 as bs_pb2
from reapi.gen.google.rpc import status_pb2
from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer
from tests.support.storage_probe import stored_files
from tests.support.tenants import Persona

ZSTD, IDENTITY, DEFLATE = re_pb2.Compressor.ZSTD, re_pb2.Compressor.IDENTITY, re_pb2.Compressor.DEFLATE
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
GiB, MiB = 1 << 30, 1 << 20
# What a refused bomb may add to the server's peak memory: far below the 3 GiB it inflates to.
MEMORY_ALLOWANCE = 64 * MiB


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


@functools.cache
def zeros_frame(size: int) -> bytes:
    """One zstd frame of `size` zero bytes, compressed piece by piece (3 GiB: ~98 KB)."""
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    block = bytes(MiB)
    parts = [compressor.compress(block) for _ in range(size // MiB)]
    return b"".join([*parts, compressor.compress(bytes(size % MiB)), compressor.flush()])


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class PeakMemory:
    """How much a server process's peak resident memory (VmHWM) grows from now on.

    Writing 5 to /proc/PID/clear_refs sets the peak back to the current resident size
    (proc(5)), so what earlier tests made the server allocate cannot hide a new peak.
    """

    def __init__(self, server: ReapiServer) -> None:
        assert server.proc is not None
        self.pid = server.proc.pid
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")
        self.start = _status_kib(self.pid, "VmHWM") * 1024

    def grown(self) -> int:
        return _status_kib(self.pid, "VmHWM") * 1024 - self.start


def compressed_write(client: Client, d: re_pb2.Digest, *pieces: bytes) -> bs_pb2.WriteResponse:
    name = f"uploads/{uuid.uuid4()}/compressed-blobs/zstd/{d.hash}/{d.size_bytes}"

    def requests() -> Iterator[bs_pb2.WriteRequest]:
        offset = 0
        for i, piece in enumerate(pieces):
            yield bs_pb2.WriteRequest(
                resource_name=name if i == 0 else "",
                write_offset=offset,
                data=piece,
                finish_write=i == len(pieces) - 1,
            )
            offset += len(piece)

    return client.bytestream.Write(requests(), metadata=client.metadata)


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
    assert f"{digest(claimed).hash}/10 inflates to more than its 10 bytes" in statuses[3].message, statuses[3]
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


def test_it_refuses_a_bytestream_upload_that_inflates_past_its_size_without_inflating_it(
    external_server: ReapiServer, client: Client
) -> None:
    bomb = zeros_frame(3 * GiB)
    assert len(bomb) < 128 * 1024
    claimed = digest(os.urandom(1024))
    before = stored_files()
    peak = PeakMemory(external_server)
    with pytest.raises(grpc.RpcError) as info:
        compressed_write(client, claimed, bomb)
    grown = peak.grown()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grown < MEMORY_ALLOWANCE, f"peak memory grew by {grown / MiB:.0f} MiB"
    assert f"{claimed.hash}/1024 inflates to more than its 1024 bytes" in (info.value.details() or "")
    # The same bomb cut into pieces, as a streaming client sends it, stops the same way.
    with pytest.raises(grpc.RpcError) as info:
        compressed_write(client, claimed, *(bomb[i : i + 4096] for i in range(0, len(bomb), 4096)))
    grown = peak.grown()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grown < MEMORY_ALLOWANCE, f"peak memory grew by {grown / MiB:.0f} MiB"
    assert client.missing(claimed) == [claimed]
    assert stored_files() == before


def test_it_refuses_a_batch_blob_that_inflates_past_its_size_without_inflating_it(
    external_server: ReapiServer, client: Client, acme: Persona
) -> None:
    bomb = zeros_frame(3 * GiB)
    claimed, good = digest(os.urandom(1024)), compressible()
    before = stored_files()
    peak = PeakMemory(external_server)
    statuses = upload(client, (claimed, bomb, ZSTD), (digest(good), zstd(good), ZSTD))
    grown = peak.grown()
    assert [s.code for s in statuses] == [INVALID_ARGUMENT, 0]
    assert grown < MEMORY_ALLOWANCE, f"peak memory grew by {grown / MiB:.0f} MiB"
    assert f"{claimed.hash}/1024 inflates to more than its 1024 bytes" in statuses[0].message
    # A digest that owns up to the 3 GiB cannot be in a batch at all: refused before inflating.
    honest = re_pb2.Digest(hash=claimed.hash, size_bytes=3 * GiB)
    with pytest.raises(grpc.RpcError) as info:
        upload(client, (honest, bomb, ZSTD))
    grown = peak.grown()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grown < MEMORY_ALLOWANCE, f"peak memory grew by {grown / MiB:.0f} MiB"
    assert "max_batch_total_size_bytes" in (info.value.details() or "")
    assert client.missing(claimed, honest, digest(good)) == [claimed, honest]
    good_hash = digest(good).hash
    assert stored_files() - before == {f"{acme.slug}/cas/{good_hash[:2]}/{good_hash}"}


def test_a_compressed_upload_of_several_frames_is_stored_whole(client: Client) -> None:
    first, second = compressible(), compressible()
    frames = [zstd(first), zstd(second)]
    blob = first + second
    reply = compressed_write(client, digest(blob), *frames)
    assert reply.committed_size == sum(map(len, frames))
    assert client.read(digest(blob)) == blob
    # RFC 8878 §3.1: a stream of frames stands for their contents one after the other.
    other = compressible() + compressible()
    half = len(other) // 2
    statuses = upload(client, (digest(other), zstd(other[:half]) + zstd(other[half:]), ZSTD))
    assert [s.code for s in statuses] == [0]
    assert client.batch_read(digest(other)).responses[0].data == other


def test_it_refuses_a_frame_that_asks_for_a_window_over_8_mib(client: Client) -> None:
    data = compressible()
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=24)  # a 16 MiB window
    streaming = zstandard.ZstdCompressor(compression_params=params).compressobj()
    wide = streaming.compress(data) + streaming.flush()
    assert zstandard.get_frame_parameters(wide).window_size == 16 * MiB
    before = stored_files()
    with pytest.raises(grpc.RpcError) as info:
        compressed_write(client, digest(data), wide)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"compressed data for {digest(data).hash}/{len(data)}" in (info.value.details() or "")
    assert "window over 8 MiB" in (info.value.details() or "")
    statuses = upload(client, (digest(data), wide, ZSTD))
    assert [s.code for s in statuses] == [INVALID_ARGUMENT]
    # The decoder's own words stay in the server log.
    assert "memory" not in statuses[0].message and "window over 8 MiB" in statuses[0].message
    assert client.missing(digest(data)) == [digest(data)]
    assert stored_files() == before


def test_a_compressed_upload_that_ends_early_or_changes_its_name_is_refused(client: Client) -> None:
    data = compressible()
    d, packed = digest(data), zstd(data)
    name = f"uploads/{uuid.uuid4()}/compressed-blobs/zstd/{d.hash}/{d.size_bytes}"
    half = len(packed) // 2
    before = stored_files()
    unfinished = [bs_pb2.WriteRequest(resource_name=name, data=packed[:half])]
    renamed = [
        bs_pb2.WriteRequest(resource_name=name, data=packed[:half]),
        bs_pb2.WriteRequest(resource_name=name.replace(d.hash, "0" * 64), data=packed[half:]),
    ]
    for requests, message in (
        (unfinished, "ended without finish_write"),
        (renamed, "resource_name changed in the middle of a Write"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            client.bytestream.Write(iter(requests), metadata=client.metadata)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (info.value.details() or "")
    assert client.missing(d) == [d]
    assert stored_files() == before
