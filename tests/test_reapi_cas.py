"""ContentAddressableStorage over a real socket: batches, presence, trees, tenancy."""

import os

import grpc
import pytest

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.google.bytestream import bytestream_pb2 as bs_pb2
from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer
from tests.support.storage_probe import stored_files
from tests.support.tenants import Persona

EMPTY = digest(b"")
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


@pytest.fixture
def client(external_server: ReapiServer, acme: Persona) -> Client:
    return Client(external_server.channel(), acme.pat())


def test_it_stores_and_finds_blobs(client: Client) -> None:
    blobs = [os.urandom(n) for n in (1, 100, 4096)]
    assert client.missing(*map(digest, blobs)) == list(map(digest, blobs))
    reply = client.upload(*blobs)
    assert [r.status.code for r in reply.responses] == [0, 0, 0]
    assert client.missing(*map(digest, blobs)) == []
    read = client.batch_read(*map(digest, blobs))
    assert [r.data for r in read.responses] == blobs
    assert [r.status.code for r in read.responses] == [0, 0, 0]


def test_the_empty_blob_is_always_present(client: Client) -> None:
    assert client.missing(EMPTY) == []
    assert client.batch_read(EMPTY).responses[0].data == b""
    assert client.read(EMPTY) == b""


def stream_read(client: Client, resource: str) -> tuple[grpc.StatusCode, bytes]:
    """A ByteStream Read's status and every byte that came before it."""
    received = []
    try:
        for response in client.bytestream.Read(
            bs_pb2.ReadRequest(resource_name=resource), metadata=client.metadata
        ):
            received.append(response.data)
    except grpc.RpcError as exc:
        return exc.code(), b"".join(received)
    return grpc.StatusCode.OK, b"".join(received)


def get_tree_code(client: Client, root: re_pb2.Digest) -> grpc.StatusCode:
    try:
        list(client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=root), metadata=client.metadata))
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_the_empty_hash_with_another_size_is_not_present(client: Client) -> None:
    fake = re_pb2.Digest(hash=EMPTY.hash, size_bytes=5)
    assert client.missing(EMPTY, fake) == [fake]
    reply = client.batch_read(EMPTY, fake)
    assert [r.status.code for r in reply.responses] == [0, NOT_FOUND]
    assert stream_read(client, client.resource(fake)) == (grpc.StatusCode.NOT_FOUND, b"")
    assert stream_read(client, f"compressed-blobs/zstd/{fake.hash}/5") == (grpc.StatusCode.NOT_FOUND, b"")
    assert get_tree_code(client, fake) == grpc.StatusCode.NOT_FOUND
    # Writing it is a size mismatch, with or without bytes, in a batch or a stream.
    reply = client.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=fake)]),
        metadata=client.metadata,
    )
    assert reply.responses[0].status.code == INVALID_ARGUMENT
    assert "got 0 bytes, the digest says 5" in reply.responses[0].status.message
    before = stored_files()
    with pytest.raises(grpc.RpcError) as info:
        client.write(b"", resource=client.upload_resource(fake))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"not {EMPTY.hash}/5" in (info.value.details() or "")
    status = client.bytestream.QueryWriteStatus(
        bs_pb2.QueryWriteStatusRequest(resource_name=client.upload_resource(fake)), metadata=client.metadata
    )
    assert not status.complete
    assert client.missing(EMPTY, fake) == [fake]
    assert stored_files() == before


def test_a_digest_whose_size_is_not_the_stored_blobs_is_not_found_anywhere(client: Client) -> None:
    data = os.urandom(100)
    stored = digest(data)
    client.upload(data)
    others = [re_pb2.Digest(hash=stored.hash, size_bytes=n) for n in (95, 105, 0)]
    # The server has just confirmed the 100-byte blob: what it remembers is that blob only.
    assert client.missing(stored, *others) == others
    reply = client.batch_read(*others, stored)
    assert [r.status.code for r in reply.responses] == [NOT_FOUND] * 3 + [0]
    assert [r.data for r in reply.responses] == [b""] * 3 + [data]
    for d in others:
        # Not a byte of the stored blob is sent under a digest that is not its own.
        assert stream_read(client, client.resource(d)) == (grpc.StatusCode.NOT_FOUND, b"")
        compressed = f"compressed-blobs/zstd/{d.hash}/{d.size_bytes}"
        assert stream_read(client, compressed) == (grpc.StatusCode.NOT_FOUND, b"")
    # A write under the wrong size is no "already present": it is refused, and what is
    # stored stays whole.
    with pytest.raises(grpc.RpcError) as info:
        client.write(data[:95], resource=client.upload_resource(others[0]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.missing(stored, others[0]) == [others[0]]
    assert client.read(stored) == data
    # A directory read as a tree root under the wrong size is not found either.
    directory = re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=stored)]).SerializeToString()
    client.upload(directory)
    assert get_tree_code(client, digest(directory)) == grpc.StatusCode.OK
    wrong_root = re_pb2.Digest(hash=digest(directory).hash, size_bytes=len(directory) - 1)
    assert get_tree_code(client, wrong_root) == grpc.StatusCode.NOT_FOUND


def test_a_digest_mismatch_fails_that_blob_and_stores_the_others(client: Client) -> None:
    good, bad = os.urandom(64), os.urandom(64)
    wrong = digest(os.urandom(64))
    short = re_pb2.Digest(hash=digest(good).hash, size_bytes=63)
    request = re_pb2.BatchUpdateBlobsRequest(
        requests=[
            re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(good), data=good),
            re_pb2.BatchUpdateBlobsRequest.Request(digest=wrong, data=bad),
            re_pb2.BatchUpdateBlobsRequest.Request(digest=short, data=good),
        ]
    )
    reply = client.cas.BatchUpdateBlobs(request, metadata=client.metadata)
    codes = [r.status.code for r in reply.responses]
    assert codes == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.INVALID_ARGUMENT.value[0]]
    assert "hashes to" in reply.responses[1].status.message
    assert "63" in reply.responses[2].status.message
    assert client.missing(digest(good), wrong) == [wrong]


@pytest.mark.parametrize(
    ("hash_", "size", "message"),
    [
        ("ABC", 3, "64 lowercase hex"),
        ("A" * 64, 3, "64 lowercase hex"),
        ("../" + "a" * 61, 3, "64 lowercase hex"),
        ("a" * 64, -1, "negative size"),
        ("a" * 64, 6 * 1024**4, "above the largest blob"),
    ],
)
def test_it_rejects_malformed_digests(client: Client, hash_: str, size: int, message: str) -> None:
    bad = re_pb2.Digest(hash=hash_, size_bytes=size)
    with pytest.raises(grpc.RpcError) as info:
        client.missing(bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")
    before = stored_files()
    reply = client.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=bad, data=b"abc")]
        ),
        metadata=client.metadata,
    )
    assert reply.responses[0].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert stored_files() == before


def test_a_batch_over_the_advertised_limit_is_refused_whole(client: Client) -> None:
    limit = client.get_capabilities().cache_capabilities.max_batch_total_size_bytes
    assert 0 < limit < 4 * 1024 * 1024
    blobs = [os.urandom(limit // 2 + 1), os.urandom(limit // 2 + 1)]
    before = stored_files()
    with pytest.raises(grpc.RpcError) as info:
        client.upload(*blobs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_batch_total_size_bytes" in (info.value.details() or "")
    assert stored_files() == before
    big = digest(blobs[0])
    with pytest.raises(grpc.RpcError) as info:
        client.batch_read(big, big)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_missing_blob_is_not_found_in_a_batch_read(client: Client) -> None:
    present = os.urandom(10)
    client.upload(present)
    absent = digest(os.urandom(10))
    reply = client.batch_read(digest(present), absent)
    assert reply.responses[0].data == present
    assert reply.responses[1].status.code == grpc.StatusCode.NOT_FOUND.value[0]


def test_it_refuses_other_digest_functions(client: Client) -> None:
    request = re_pb2.FindMissingBlobsRequest(
        blob_digests=[digest(b"x")], digest_function=re_pb2.DigestFunction.SHA1
    )
    with pytest.raises(grpc.RpcError) as info:
        client.cas.FindMissingBlobs(request, metadata=client.metadata)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "SHA1" in (info.value.details() or "")


def make_tree(client: Client, width: int, depth: int) -> tuple[re_pb2.Digest, int]:
    """Upload a directory tree; returns its root digest and how many directories it holds."""
    count = 0

    def build(level: int, tag: str) -> re_pb2.Digest:
        nonlocal count
        d = re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=digest(tag.encode()))])
        if level < depth:
            for i in range(width):
                child = build(level + 1, f"{tag}/{i}")
                d.directories.append(re_pb2.DirectoryNode(name=f"d{i}", digest=child))
        data = d.SerializeToString()
        client.upload(data)
        count += 1
        return digest(data)

    return build(0, "root"), count


def test_get_tree_streams_every_directory_and_pages(client: Client) -> None:
    root, count = make_tree(client, width=3, depth=3)  # 1 + 3 + 9 + 27 directories
    assert count == 40
    whole = list(client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=root), metadata=client.metadata))
    assert sum(len(r.directories) for r in whole) == 40
    seen, token, pages = 0, "", 0
    while True:
        page = list(
            client.cas.GetTree(
                re_pb2.GetTreeRequest(root_digest=root, page_size=7, page_token=token),
                metadata=client.metadata,
            )
        )
        assert len(page) == 1
        seen += len(page[0].directories)
        pages += 1
        token = page[0].next_page_token
        if not token:
            break
    assert (seen, pages) == (40, 6)


def test_get_tree_of_a_missing_root_is_not_found_and_bad_tokens_are_refused(client: Client) -> None:
    missing = digest(b"no such directory")
    with pytest.raises(grpc.RpcError) as info:
        list(client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=missing), metadata=client.metadata))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    root, _ = make_tree(client, 1, 1)
    with pytest.raises(grpc.RpcError) as info:
        list(
            client.cas.GetTree(
                re_pb2.GetTreeRequest(root_digest=root, page_token="forged"), metadata=client.metadata
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def upload_directory(client: Client, directory: re_pb2.Directory) -> re_pb2.Digest:
    data = directory.SerializeToString()
    client.upload(data)
    return digest(data)


NOT_HEX = re_pb2.Digest(hash="../../../etc/passwd", size_bytes=1)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (
            re_pb2.Directory(directories=[re_pb2.DirectoryNode(name="up", digest=NOT_HEX)]),
            "directories[0].digest",
        ),
        (
            re_pb2.Directory(
                directories=[
                    re_pb2.DirectoryNode(name="neg", digest=re_pb2.Digest(hash="a" * 64, size_bytes=-1))
                ]
            ),
            "directories[0].digest",
        ),
        (re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=NOT_HEX)]), "files[0].digest"),
        (re_pb2.Directory(files=[re_pb2.FileNode(name="..", digest=EMPTY)]), "files[0].name"),
        (re_pb2.Directory(symlinks=[re_pb2.SymlinkNode(name="l", target="/etc")]), "symlinks[0].target"),
    ],
)
def test_get_tree_fails_cleanly_on_a_directory_holding_a_bad_digest_or_name(
    client: Client, bad: re_pb2.Directory, field: str
) -> None:
    # The bad Directory two levels down: the read fails naming it, not INTERNAL, not skipped.
    bad_digest = upload_directory(client, bad)
    middle = upload_directory(
        client, re_pb2.Directory(directories=[re_pb2.DirectoryNode(name="b", digest=bad_digest)])
    )
    root = upload_directory(
        client, re_pb2.Directory(directories=[re_pb2.DirectoryNode(name="m", digest=middle)])
    )
    with pytest.raises(grpc.RpcError) as info:
        list(client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=root), metadata=client.metadata))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"Directory {bad_digest.hash}/{bad_digest.size_bytes} {field}" in (info.value.details() or "")


def test_get_tree_fails_cleanly_on_a_child_that_is_not_a_directory(client: Client) -> None:
    garbage = b"\xff\xff\xff not a Directory " + os.urandom(8)
    client.upload(garbage)
    root = upload_directory(
        client, re_pb2.Directory(directories=[re_pb2.DirectoryNode(name="x", digest=digest(garbage))])
    )
    with pytest.raises(grpc.RpcError) as info:
        list(client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=root), metadata=client.metadata))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a Directory" in (info.value.details() or "")


def test_one_tenant_cannot_find_read_or_overwrite_anothers_blobs(
    external_server: ReapiServer, acme: Persona, globex: Persona
) -> None:
    alice = Client(external_server.channel(), acme.pat())
    charlie = Client(external_server.channel(), globex.pat())
    secret = b"acme's secret " + os.urandom(16)
    alice.upload(secret)
    d = digest(secret)
    assert charlie.missing(d) == [d]
    assert charlie.batch_read(d).responses[0].status.code == grpc.StatusCode.NOT_FOUND.value[0]
    with pytest.raises(grpc.RpcError) as info:
        charlie.read(d)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # Charlie uploading the same bytes creates his own copy; alice's stays hers.
    charlie.upload(secret)
    assert charlie.missing(d) == [] and alice.read(d) == secret
    files = stored_files()
    assert f"{acme.slug}/cas/{d.hash[:2]}/{d.hash}" in files
    assert f"{globex.slug}/cas/{d.hash[:2]}/{d.hash}" in files
