"""ActionCache over a real socket: entries served only while complete, per tenant."""

import os
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer, manage
from tests.support.storage_probe import blob_root, delete_blob, put_blob, stored_files
from tests.support.tenants import Persona


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


# --- every digest, path and Tree inside a result is checked like a request ---------------------


def ac_key(persona: Persona, action: re_pb2.Digest) -> str:
    return f"{persona.slug}/ac/{action.hash[:2]}/{action.hash}"


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def path_to(other: str, d: re_pb2.Digest) -> re_pb2.Digest:
    """A "digest" whose hash is a relative path from this tenant's CAS shard to `other`'s blob:
    `<tenant>/cas/<hash[:2]>/<hash>` with hash[:2] == ".." resolves to `<other>/cas/HH/H`."""
    return re_pb2.Digest(hash=f"../{other}/cas/{d.hash[:2]}/{d.hash}", size_bytes=d.size_bytes)


GOOD = digest(b"an output")
NOT_HEX = re_pb2.Digest(hash="../../../etc/passwd", size_bytes=1)
TOO_BIG = re_pb2.Digest(hash=GOOD.hash, size_bytes=6 * 1024**4)


def three_files(bad: re_pb2.Digest) -> re_pb2.ActionResult:
    return re_pb2.ActionResult(
        output_files=[
            re_pb2.OutputFile(path="out/a", digest=GOOD),
            re_pb2.OutputFile(path="out/b", digest=GOOD),
            re_pb2.OutputFile(path="out/c", digest=bad),
        ]
    )


@pytest.mark.parametrize(
    ("field", "result"),
    [
        ("output_files[2].digest", three_files(NOT_HEX)),
        ("output_files[2].digest", three_files(re_pb2.Digest(hash=GOOD.hash, size_bytes=-1))),
        ("output_files[2].digest", three_files(TOO_BIG)),
        ("output_files[2].digest", three_files(re_pb2.Digest(hash=GOOD.hash.upper(), size_bytes=9))),
        ("stdout_digest", re_pb2.ActionResult(stdout_digest=NOT_HEX)),
        ("stderr_digest", re_pb2.ActionResult(stderr_digest=re_pb2.Digest(hash=GOOD.hash, size_bytes=-5))),
        (
            "output_directories[0].tree_digest",
            re_pb2.ActionResult(output_directories=[re_pb2.OutputDirectory(path="d", tree_digest=NOT_HEX)]),
        ),
        (
            "output_directories[0].root_directory_digest",
            re_pb2.ActionResult(
                output_directories=[
                    re_pb2.OutputDirectory(path="d", tree_digest=digest(b""), root_directory_digest=NOT_HEX)
                ]
            ),
        ),
    ],
)
def test_it_refuses_a_result_whose_digest_is_not_a_sha256_naming_the_field(
    client: Client, acme: Persona, field: str, result: re_pb2.ActionResult
) -> None:
    action = digest(os.urandom(32))
    err = refusal(lambda: client.update_action_result(action, result))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field}:" in (err.details() or "")
    assert ac_key(acme, action) not in stored_files()
    assert refusal(lambda: client.get_action_result(action)).code() == grpc.StatusCode.NOT_FOUND


def tree_with(bad: re_pb2.Digest, where: str) -> re_pb2.Tree:
    leaf = re_pb2.Directory(files=[re_pb2.FileNode(name="ok", digest=GOOD)])
    tree = re_pb2.Tree(
        root=re_pb2.Directory(files=[re_pb2.FileNode(name="ok", digest=GOOD)]), children=[leaf]
    )
    if where == "root.files[1].digest":
        tree.root.files.add(name="stolen", digest=bad)
    elif where == "children[0].files[1].digest":
        tree.children[0].files.add(name="stolen", digest=bad)
    else:
        tree.root.directories.add(name="sub", digest=bad)
    return tree


@pytest.mark.parametrize(
    "where", ["root.files[1].digest", "children[0].files[1].digest", "root.directories[0].digest"]
)
def test_it_refuses_a_tree_holding_a_path_for_a_digest(
    client: Client, acme: Persona, globex: Persona, where: str
) -> None:
    secret = b"globex's blob " + os.urandom(16)
    Client(client.channel, globex.pat()).upload(secret)
    tree = tree_with(path_to(globex.slug, digest(secret)), where).SerializeToString()
    client.upload(tree)
    action = digest(os.urandom(32))
    result = re_pb2.ActionResult(
        output_directories=[re_pb2.OutputDirectory(path="d", tree_digest=digest(tree))]
    )
    err = refusal(lambda: client.update_action_result(action, result))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output_directories[0].tree_digest" in (err.details() or "")
    assert f"{where}:" in (err.details() or "")
    assert ac_key(acme, action) not in stored_files()


def other_tenants_blob(client: Client, globex: Persona) -> re_pb2.Digest:
    secret = b"globex's blob " + os.urandom(16)
    Client(client.channel, globex.pat()).upload(secret)
    return path_to(globex.slug, digest(secret))


def outside_the_storage_root(client: Client, globex: Persona) -> re_pb2.Digest:
    # `<tenant>/cas/../../../../NAME` from the storage root (DATA_DIR/blobs/external) is DATA_DIR/NAME.
    name = f"outside-{uuid.uuid4().hex}"
    data = os.urandom(77)
    (blob_root().parent.parent / name).write_bytes(data)
    return re_pb2.Digest(hash=f"../../../{name}", size_bytes=len(data))


def as_output_file(client: Client, bad: re_pb2.Digest) -> re_pb2.ActionResult:
    return re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="out/f", digest=bad)])


def as_stdout(client: Client, bad: re_pb2.Digest) -> re_pb2.ActionResult:
    return re_pb2.ActionResult(stdout_digest=bad)


def in_a_tree(client: Client, bad: re_pb2.Digest) -> re_pb2.ActionResult:
    tree = tree_with(bad, "children[0].files[1].digest").SerializeToString()
    client.upload(tree)
    return re_pb2.ActionResult(
        output_directories=[re_pb2.OutputDirectory(path="d", tree_digest=digest(tree))]
    )


@pytest.mark.parametrize("target", [other_tenants_blob, outside_the_storage_root])
@pytest.mark.parametrize("placed", [as_output_file, as_stdout, in_a_tree])
def test_a_stored_entry_with_a_path_for_a_digest_is_a_miss_not_a_probe_and_is_dropped(
    client: Client,
    acme: Persona,
    globex: Persona,
    target: Callable[[Client, Persona], re_pb2.Digest],
    placed: Callable[[Client, re_pb2.Digest], re_pb2.ActionResult],
) -> None:
    # The path resolves to a blob that exists with exactly that size: were it looked up, the
    # entry would be a hit and tell acme that globex holds the blob (or that the file exists).
    # (acme holds blobs of its own, so the path's first components exist to be climbed out of.)
    client.upload(b"an output")
    result = placed(client, target(client, globex))
    action = digest(os.urandom(32))
    put_blob(ac_key(acme, action), result.SerializeToString())
    err = refusal(lambda: client.get_action_result(action))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "dropped" in (err.details() or "")
    assert ac_key(acme, action) not in stored_files()


def test_a_stored_entry_that_does_not_parse_is_a_miss_and_is_dropped(
    client: Client, acme: Persona, external_server: ReapiServer
) -> None:
    action = digest(os.urandom(32))
    put_blob(ac_key(acme, action), b"\xff\xff\xff not an ActionResult")
    err = refusal(lambda: client.get_action_result(action))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert ac_key(acme, action) not in stored_files()
    assert ac_key(acme, action) in external_server.log.read_text()


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
@pytest.mark.parametrize(
    "path",
    [
        "../../x",
        "/etc/passwd",
        "",
        "a\0b",
        "./a",
        "a/./b",
        "a/../b",
        "a/..",
        "a//b",
        "a/",
        "..\\..\\x",
        "C:/Windows/x",
        "\\\\host\\share",
    ],
)
def test_it_refuses_output_paths_that_leave_the_working_directory(
    client: Client, acme: Persona, kind: str, path: str
) -> None:
    result = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="fine/output", digest=GOOD)])
    if kind == "file":
        result.output_files.add(path=path, digest=GOOD)
        field = "output_files[1].path"
    elif kind == "directory":
        result.output_directories.add(path=path, tree_digest=digest(b""))
        field = "output_directories[0].path"
    else:
        result.output_symlinks.add(path=path, target="fine/output")
        field = "output_symlinks[0].path"
    action = digest(os.urandom(32))
    err = refusal(lambda: client.update_action_result(action, result))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.details() or "")
    assert repr(path) in (err.details() or "") or (not path and "empty" in (err.details() or ""))
    assert ac_key(acme, action) not in stored_files()


@pytest.mark.parametrize(
    ("result", "second"),
    [
        (
            re_pb2.ActionResult(
                output_files=[
                    re_pb2.OutputFile(path="out/x", digest=GOOD),
                    re_pb2.OutputFile(path="out/x", digest=GOOD),
                ]
            ),
            "output_files[1].path",
        ),
        (
            re_pb2.ActionResult(
                output_files=[re_pb2.OutputFile(path="out/x", digest=GOOD)],
                output_directories=[re_pb2.OutputDirectory(path="out/x", tree_digest=digest(b""))],
            ),
            "output_directories[0].path",
        ),
        (
            re_pb2.ActionResult(
                output_directories=[re_pb2.OutputDirectory(path="out/x", tree_digest=digest(b""))],
                output_symlinks=[re_pb2.OutputSymlink(path="out/x", target="y")],
            ),
            "output_symlinks[0].path",
        ),
        (
            re_pb2.ActionResult(
                output_symlinks=[re_pb2.OutputSymlink(path="out/x", target="y")],
                output_file_symlinks=[re_pb2.OutputSymlink(path="out/x", target="elsewhere")],
            ),
            "output_file_symlinks[0].path",
        ),
    ],
)
def test_it_refuses_an_output_path_listed_twice(
    client: Client, acme: Persona, result: re_pb2.ActionResult, second: str
) -> None:
    action = digest(os.urandom(32))
    err = refusal(lambda: client.update_action_result(action, result))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert second in (err.details() or "") and "'out/x'" in (err.details() or "")
    assert ac_key(acme, action) not in stored_files()


def test_a_symlink_may_be_in_output_symlinks_and_a_deprecated_list_too(client: Client) -> None:
    # REAPI v2.1: output_symlinks, and the deprecated lists for older clients, may both list it.
    link = re_pb2.OutputSymlink(path="out/link", target="../lib/libx.so")
    result = re_pb2.ActionResult(output_symlinks=[link], output_file_symlinks=[link])
    action = digest(os.urandom(32))
    client.update_action_result(action, result)
    assert client.get_action_result(action) == result


def test_symlink_targets_are_data_and_may_climb(client: Client) -> None:
    # REAPI OutputSymlink.target: relative to the symlink's directory, `..` allowed anywhere.
    relative = re_pb2.ActionResult(
        output_symlinks=[re_pb2.OutputSymlink(path="out/link", target="../../outside/lib.so")]
    )
    action = digest(os.urandom(32))
    client.update_action_result(action, relative)
    assert client.get_action_result(action) == relative


ABSOLUTE_LINK_TREE = re_pb2.Tree(
    root=re_pb2.Directory(symlinks=[re_pb2.SymlinkNode(name="l", target="/usr/bin/env")])
).SerializeToString()


@pytest.mark.parametrize(
    ("field", "result"),
    [
        (
            "output_symlinks[0].target",
            re_pb2.ActionResult(output_symlinks=[re_pb2.OutputSymlink(path="out/l", target="/usr/bin/env")]),
        ),
        (
            "output_file_symlinks[0].target",
            re_pb2.ActionResult(output_file_symlinks=[re_pb2.OutputSymlink(path="out/l", target="/etc")]),
        ),
        (
            "output_directory_symlinks[0].target",
            re_pb2.ActionResult(output_directory_symlinks=[re_pb2.OutputSymlink(path="out/l", target="")]),
        ),
        (
            "root.symlinks[0].target",
            re_pb2.ActionResult(
                output_directories=[
                    re_pb2.OutputDirectory(path="out/d", tree_digest=digest(ABSOLUTE_LINK_TREE))
                ]
            ),
        ),
    ],
)
def test_it_refuses_absolute_symlink_targets_as_capabilities_say(
    client: Client, acme: Persona, field: str, result: re_pb2.ActionResult
) -> None:
    caps = client.get_capabilities().cache_capabilities
    assert caps.symlink_absolute_path_strategy == re_pb2.SymlinkAbsolutePathStrategy.DISALLOWED
    client.upload(ABSOLUTE_LINK_TREE)
    action = digest(os.urandom(32))
    err = refusal(lambda: client.update_action_result(action, result))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field} " in (err.details() or "")
    assert ac_key(acme, action) not in stored_files()


def test_a_tree_that_does_not_parse_is_refused_and_one_sent_later_makes_a_miss(
    client: Client, acme: Persona, external_server: ReapiServer
) -> None:
    garbage = b"\xff\xff\xff not a Tree " + os.urandom(8)
    result = re_pb2.ActionResult(
        output_directories=[re_pb2.OutputDirectory(path="d", tree_digest=digest(garbage))]
    )
    # Uploaded first (as Bazel does): refused, nothing stored.
    client.upload(garbage)
    action = digest(os.urandom(32))
    err = refusal(lambda: client.update_action_result(action, result))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output_directories[0].tree_digest" in (err.details() or "") and "not a Tree" in (
        err.details() or ""
    )
    assert ac_key(acme, action) not in stored_files()

    # Stored regardless (an older server, or the Tree sent after the entry): a miss, dropped, logged.
    put_blob(ac_key(acme, action), result.SerializeToString())
    err = refusal(lambda: client.get_action_result(action))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert ac_key(acme, action) not in stored_files()
    assert ac_key(acme, action) in external_server.log.read_text()


def test_an_entry_is_stored_before_its_tree_and_checked_once_the_tree_arrives(
    client: Client, acme: Persona
) -> None:
    tree = tree_with(NOT_HEX, "root.files[1].digest").SerializeToString()
    result = re_pb2.ActionResult(
        output_directories=[re_pb2.OutputDirectory(path="d", tree_digest=digest(tree))]
    )
    action = digest(os.urandom(32))
    client.update_action_result(action, result)  # the Tree is not in the CAS: nothing to check yet
    assert refusal(lambda: client.get_action_result(action)).code() == grpc.StatusCode.NOT_FOUND
    assert ac_key(acme, action) in stored_files()
    client.upload(tree)
    err = refusal(lambda: client.get_action_result(action))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "root.files[1].digest" in (err.details() or "")
    assert ac_key(acme, action) not in stored_files()


# --- the work one entry can cause is bounded ------------------------------------------------

LIMIT = 8


@pytest.fixture(scope="module")
def small_limit_server() -> Iterator[ReapiServer]:
    with ReapiServer("external", env={"REAPI_MAX_RESULT_ENTRIES": str(LIMIT)}) as server:
        yield server


@pytest.fixture
def limited(small_limit_server: ReapiServer, acme: Persona) -> Iterator[Client]:
    with small_limit_server.channel() as channel:
        yield Client(channel, acme.pat())


def files(n: int) -> list[re_pb2.OutputFile]:
    return [re_pb2.OutputFile(path=f"out/{i}", digest=digest(b"")) for i in range(n)]


def test_it_refuses_a_result_with_more_outputs_than_the_limit_naming_it(
    limited: Client, acme: Persona
) -> None:
    at_limit = re_pb2.ActionResult(output_files=files(LIMIT))
    action = digest(os.urandom(32))
    limited.update_action_result(action, at_limit)
    assert limited.get_action_result(action) == at_limit

    over = re_pb2.ActionResult(
        output_files=files(LIMIT - 1), stdout_digest=digest(b""), stderr_digest=digest(b"")
    )
    action = digest(os.urandom(32))
    err = refusal(lambda: limited.update_action_result(action, over))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"more than {LIMIT} entries" in (err.details() or "")
    assert "REAPI_MAX_RESULT_ENTRIES" in (err.details() or "")
    assert ac_key(acme, action) not in stored_files()


def wide_tree(children: int) -> bytes:
    root = re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=digest(b""))])
    return re_pb2.Tree(root=root, children=[re_pb2.Directory()] * children).SerializeToString()


def test_it_refuses_a_tree_over_the_limit_and_an_entry_whose_tree_arrives_over_it_is_dropped(
    limited: Client, acme: Persona
) -> None:
    # One output directory, its root with one file, and children: LIMIT - 3 children fit.
    fits = wide_tree(LIMIT - 3)
    limited.upload(fits)
    action = digest(os.urandom(32))
    result = re_pb2.ActionResult(
        output_directories=[re_pb2.OutputDirectory(path="d", tree_digest=digest(fits))]
    )
    limited.update_action_result(action, result)
    assert limited.get_action_result(action) == result

    too_wide = wide_tree(LIMIT - 2)
    result = re_pb2.ActionResult(
        output_directories=[re_pb2.OutputDirectory(path="d", tree_digest=digest(too_wide))]
    )
    # Sent after its entry: stored, then a miss that is dropped once the Tree is there.
    action = digest(os.urandom(32))
    limited.update_action_result(action, result)
    limited.upload(too_wide)
    err = refusal(lambda: limited.get_action_result(action))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "REAPI_MAX_RESULT_ENTRIES" in (err.details() or "")
    assert ac_key(acme, action) not in stored_files()
    # Sent first: refused.
    err = refusal(lambda: limited.update_action_result(action, result))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "REAPI_MAX_RESULT_ENTRIES" in (err.details() or "")
    assert ac_key(acme, action) not in stored_files()


def test_it_refuses_trees_larger_than_the_limit_allows_before_reading_them(
    limited: Client, acme: Persona
) -> None:
    # Few entries, many bytes: 512 bytes a Tree may take per entry of the limit.
    bulky = re_pb2.Directory(
        node_properties=re_pb2.NodeProperties(
            properties=[re_pb2.NodeProperty(name="x", value="y" * (512 * LIMIT))]
        )
    )
    tree = re_pb2.Tree(root=bulky).SerializeToString()
    action = digest(os.urandom(32))
    result = re_pb2.ActionResult(
        output_directories=[re_pb2.OutputDirectory(path="d", tree_digest=digest(tree))]
    )
    err = refusal(lambda: limited.update_action_result(action, result))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output_directories[0].tree_digest" in (err.details() or "")
    assert "REAPI_MAX_RESULT_ENTRIES" in (err.details() or "")
    assert ac_key(acme, action) not in stored_files()


def test_it_refuses_a_tree_with_more_children_than_the_default_limit(client: Client, acme: Persona) -> None:
    # 100,001 empty children: 200 KB of Tree, cheap to send, a hundred thousand directories to walk.
    tree = wide_tree(100_001)
    client.write(tree)
    action = digest(os.urandom(32))
    result = re_pb2.ActionResult(
        output_directories=[re_pb2.OutputDirectory(path="d", tree_digest=digest(tree))]
    )
    err = refusal(lambda: client.update_action_result(action, result))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 100000 entries" in (err.details() or "")
    assert ac_key(acme, action) not in stored_files()


def test_a_zero_entry_limit_stops_start_up() -> None:
    result = manage("check", env={"REAPI_MAX_RESULT_ENTRIES": "0"}, check=False)
    assert result.returncode != 0
    assert "REAPI_MAX_RESULT_ENTRIES" in result.stderr
