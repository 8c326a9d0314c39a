"""ActionCache over a real socket: entries served only while complete, per tenant."""

import os

import grpc
import pytest

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from tests.reapi_client import Client, digest
from tests.servers import ReapiServer
from tests.storage_probe import delete_blob
from tests.tenants import Persona


@pytest.fixture
def client(external_server: ReapiServer, acme: Persona) -> Client:
    return Client(external_server.channel(), acme.pat())


def result_with_outputs(client: Client) -> tuple[re_pb2.ActionResult, list[bytes]]:
    out, stdout = os.urandom(300), b"compiling...\n" + os.urandom(8)
    client.upload(out, stdout)
    result = re_pb2.ActionResult(
        output_files=[re_pb2.OutputFile(path="bazel-out/out.bin", digest=digest(out), is_executable=True)],
        stdout_digest=digest(stdout),
        exit_code=0,
    )
    return result, [out, stdout]


def test_it_stores_and_serves_an_action_result(client: Client) -> None:
    action = digest(os.urandom(32))
    with pytest.raises(grpc.RpcError) as info:
        client.get_action_result(action)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    result, _ = result_with_outputs(client)
    client.update_action_result(action, result)
    assert client.get_action_result(action) == result


def test_it_inlines_stdout_and_files_on_request(client: Client) -> None:
    action = digest(os.urandom(32))
    result, (out, stdout) = result_with_outputs(client)
    client.update_action_result(action, result)
    reply = client.ac.GetActionResult(
        re_pb2.GetActionResultRequest(
            action_digest=action, inline_stdout=True, inline_output_files=["bazel-out/out.bin"]
        ),
        metadata=client.metadata,
    )
    assert reply.stdout_raw == stdout
    assert reply.output_files[0].contents == out


def test_an_entry_whose_output_is_gone_is_a_miss_not_a_dangling_hit(client: Client, acme: Persona) -> None:
    action = digest(os.urandom(32))
    result, (out, _) = result_with_outputs(client)
    client.update_action_result(action, result)
    d = digest(out)
    delete_blob(f"{acme.slug}/cas/{d.hash[:2]}/{d.hash}")
    # The server process may still remember the blob (presence cache); a new server process
    # starts cold, as a peer process would be after another process lost the blob.
    fresh = Client(client.channel, client.token)
    with pytest.raises(grpc.RpcError) as info:
        _get_from_new_process(fresh, action)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert d.hash in (info.value.details() or "")


def _get_from_new_process(client: Client, action: re_pb2.Digest) -> re_pb2.ActionResult:
    with ReapiServer("external") as other:
        return Client(other.channel(), client.token).get_action_result(action)


def test_an_entry_whose_output_tree_is_incomplete_is_a_miss(client: Client) -> None:
    present, absent = os.urandom(50), os.urandom(50)
    client.upload(present)
    tree = re_pb2.Tree(
        root=re_pb2.Directory(
            files=[
                re_pb2.FileNode(name="a", digest=digest(present)),
                re_pb2.FileNode(name="b", digest=digest(absent)),
            ]
        )
    )
    tree_bytes = tree.SerializeToString()
    client.upload(tree_bytes)
    action = digest(os.urandom(32))
    client.update_action_result(
        action,
        re_pb2.ActionResult(
            output_directories=[re_pb2.OutputDirectory(path="out", tree_digest=digest(tree_bytes))]
        ),
    )
    with pytest.raises(grpc.RpcError) as info:
        client.get_action_result(action)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    client.upload(absent)
    assert client.get_action_result(action).output_directories[0].path == "out"


def test_an_entry_listing_a_digest_of_another_size_is_a_miss(client: Client) -> None:
    out = os.urandom(300)
    client.upload(out)
    empty_of_five = re_pb2.Digest(hash=digest(b"").hash, size_bytes=5)
    out_short = re_pb2.Digest(hash=digest(out).hash, size_bytes=299)
    tree = re_pb2.Tree(root=re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=out_short)]))
    client.upload(tree.SerializeToString())
    results = [
        re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="out", digest=empty_of_five)]),
        re_pb2.ActionResult(stdout_digest=empty_of_five),
        re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="out", digest=out_short)]),
        re_pb2.ActionResult(
            output_directories=[
                re_pb2.OutputDirectory(path="dir", tree_digest=digest(tree.SerializeToString()))
            ]
        ),
    ]
    for result in results:
        action = digest(os.urandom(32))
        client.update_action_result(action, result)
        with pytest.raises(grpc.RpcError) as info:
            client.get_action_result(action)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, result
    # The same entry naming the blob by its own digest is a hit.
    action = digest(os.urandom(32))
    whole = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="out", digest=digest(out))])
    client.update_action_result(action, whole)
    assert client.get_action_result(action) == whole


def test_it_rejects_malformed_entries(client: Client) -> None:
    action = digest(os.urandom(32))
    bad = re_pb2.ActionResult(
        output_files=[re_pb2.OutputFile(path="x", digest=re_pb2.Digest(hash="zz", size_bytes=1))]
    )
    with pytest.raises(grpc.RpcError) as info:
        client.update_action_result(action, bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    absolute = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="/etc/passwd", digest=digest(b""))])
    with pytest.raises(grpc.RpcError) as info:
        client.update_action_result(action, absolute)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        client.update_action_result(re_pb2.Digest(hash="nothex", size_bytes=1), re_pb2.ActionResult())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_one_tenant_cannot_read_or_overwrite_anothers_action_results(
    external_server: ReapiServer, acme: Persona, globex: Persona
) -> None:
    alice = Client(external_server.channel(), acme.pat())
    charlie = Client(external_server.channel(), globex.pat())
    action = digest(os.urandom(32))
    result, _ = result_with_outputs(alice)
    alice.update_action_result(action, result)
    with pytest.raises(grpc.RpcError) as info:
        charlie.get_action_result(action)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    charlie.update_action_result(action, re_pb2.ActionResult(exit_code=1))
    assert alice.get_action_result(action) == result
    assert charlie.get_action_result(action).exit_code == 1
    for_globex = Client(external_server.channel(), acme.pat(), instance=globex.slug)
    with pytest.raises(grpc.RpcError) as info:
        for_globex.get_action_result(action)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
