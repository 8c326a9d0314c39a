"""Invocations over real gRPC calls: RequestMetadata read (and an oversize header ignored),
misses explained with no relative and against a relative whose input tree is not stored, and
each tenant's invocations (and each developer's) out of the others' reach in the CLI, the
portal's pages and the REST API."""

import uuid
from collections.abc import Iterator

import grpc
import pytest
import requests

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.models import Invocation
from reapi.request_metadata import KEY
from tests.support.execution_fixtures import ActionSpec
from tests.support.oidc import PortalServer
from tests.support.polling import wait_for
from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer, manage
from tests.support.tenants import Persona
from tests.test_portal_api import API_SCOPES, logged_in, pat_session


@pytest.fixture(scope="module")
def server() -> Iterator[ReapiServer]:
    with ReapiServer("external", env={"REAPI_USAGE_FLUSH_SECONDS": "1"}) as s:
        yield s


def header(invocation: str, target: str = "//:t", padding: str = "") -> tuple[str, bytes]:
    meta = re_pb2.RequestMetadata(
        tool_details=re_pb2.ToolDetails(tool_name="bazel", tool_version="4.2.3"),
        tool_invocation_id=invocation,
        action_mnemonic="Genrule",
        target_id=target + padding,
    )
    return KEY, meta.SerializeToString()


def look_up(client: Client, action: re_pb2.Digest, meta: tuple[str, bytes]) -> grpc.StatusCode:
    try:
        client.ac.GetActionResult(
            re_pb2.GetActionResultRequest(action_digest=action), metadata=(*client.metadata, meta)
        )
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def missed_once(client: Client, slug: str, spec: ActionSpec, upload: bool = True) -> str:
    """One invocation that misses `spec`'s action; returns its id once it is saved."""
    invocation = str(uuid.uuid4())
    action = spec.upload(client) if upload else spec.build()[0]
    assert look_up(client, action, header(invocation)) == grpc.StatusCode.NOT_FOUND
    wait_for(
        lambda: Invocation.objects.filter(tenant__slug=slug, invocation_id=invocation, misses=1).exists()
    )
    return invocation


def explain(slug: str, invocation: str) -> str:
    return manage("explain", invocation, "--tenant", slug).stdout


def test_a_miss_with_no_earlier_action_of_its_outputs_says_so(server: ReapiServer, acme: Persona) -> None:
    client = Client(server.channel(), acme.pat(acme.developer))
    spec = ActionSpec(["/bin/sh", "-c", "echo > out"], output_files=["out"], salt=acme.slug.encode())
    invocation = missed_once(client, acme.slug, spec)
    row = Invocation.objects.get(tenant=acme.tenant, invocation_id=invocation)
    assert (row.tool_name, row.tool_version, row.username) == ("bazel", "4.2.3", acme.developer)
    assert "no earlier action with these outputs" in explain(acme.slug, invocation)


def test_a_relative_without_its_input_tree_is_said_to_differ_in_stored_inputs_only(
    server: ReapiServer, acme: Persona
) -> None:
    client = Client(server.channel(), acme.pat(acme.developer))
    argv, outs = ["/bin/sh", "-c", "cat in > out"], ["out"]
    old = ActionSpec(argv, inputs={"in": b"old"}, output_files=outs, env={"PATH": "/bin", "LANG": "C"})
    # Only the old Action and Command reach the CAS, as in a cache-only build.
    action, blobs = old.build()
    assert all(r.status.code == 0 for r in client.upload(*blobs[-2:]).responses)
    invocation = str(uuid.uuid4())
    assert look_up(client, action, header(invocation)) == grpc.StatusCode.NOT_FOUND
    wait_for(lambda: Invocation.objects.filter(tenant=acme.tenant, invocation_id=invocation).exists())

    new = ActionSpec([*argv, "--verbose"], inputs={"in": b"new"}, output_files=outs, env={"PATH": "/bin"})
    second = missed_once(client, acme.slug, new)
    out = explain(acme.slug, second)
    assert f"of invocation {invocation}" in out, out
    assert "argument added: --verbose" in out, out
    assert "environment variable LANG removed (was C)" in out, out
    assert "inputs differ; the input trees are not stored" in out, out


def test_an_oversize_request_metadata_header_is_ignored(server: ReapiServer, acme: Persona) -> None:
    client = Client(server.channel(), acme.pat(acme.developer))
    oversize = str(uuid.uuid4())
    absent = digest(b"never stored " + acme.slug.encode())
    # The call itself is served: the header is the client's claim, not a reason to fail.
    assert look_up(client, absent, header(oversize, padding="x" * 5000)) == grpc.StatusCode.NOT_FOUND
    # A later call's invocation is saved in the same flush or a later one.
    spec = ActionSpec(["/bin/true"], output_files=["o"], salt=b"later " + acme.slug.encode())
    missed_once(client, acme.slug, spec)
    assert not Invocation.objects.filter(invocation_id=oversize).exists()


def test_another_tenants_invocations_are_not_found_in_the_cli(
    server: ReapiServer, acme: Persona, globex: Persona
) -> None:
    client = Client(server.channel(), acme.pat(acme.developer))
    spec = ActionSpec(["/bin/true"], output_files=["x"], salt=b"mine " + acme.slug.encode())
    invocation = missed_once(client, acme.slug, spec)

    assert invocation in manage("invocations", "--tenant", acme.slug, "--user", acme.developer or "").stdout
    assert manage("invocations", "--tenant", acme.slug, "--user", acme.admin).stdout == ""
    assert manage("invocations", "--tenant", globex.slug).stdout == ""
    refused = manage("explain", invocation, "--tenant", globex.slug, check=False)
    assert refused.returncode != 0
    assert f"no invocation {invocation}" in refused.stderr


@pytest.fixture(scope="module")
def portal() -> Iterator[PortalServer]:
    with PortalServer() as p:
        yield p


def test_developers_see_their_own_builds_and_other_tenants_none_in_the_portal_and_rest(
    server: ReapiServer, portal: PortalServer, acme: Persona, globex: Persona
) -> None:
    admins = Client(server.channel(), acme.pat(acme.admin))
    developers = Client(server.channel(), acme.pat(acme.developer))
    outs = ["shared.out"]
    alices = missed_once(admins, acme.slug, ActionSpec(["/bin/echo", "one"], output_files=outs))
    bobs = missed_once(developers, acme.slug, ActionSpec(["/bin/echo", "two"], output_files=outs))
    base = f"{portal.url}/api/v1/tenants/{acme.slug}/invocations"

    bob = logged_in(portal, acme.developer or "")
    assert [i["id"] for i in bob.get(f"{base}/").json()] == [bobs]
    assert bob.get(f"{base}/{alices}/").status_code == 404
    detail = bob.get(f"{base}/{bobs}/").json()
    assert (detail["misses"], detail["user"]) == (1, acme.developer)
    why = detail["missed"][0]["explanation"]
    assert why["relative"]["invocation"] == alices
    assert why["changes"] == [{"kind": "argument", "text": "argument 1 changed: one → two"}]
    page = bob.get(f"{portal.url}/t/{acme.slug}/invocations/")
    assert page.status_code == 200 and bobs in page.text and alices not in page.text
    assert bob.get(f"{portal.url}/t/{acme.slug}/invocations/{alices}/").status_code == 404
    shown = bob.get(f"{portal.url}/t/{acme.slug}/invocations/{bobs}/")
    assert "argument 1 changed: one → two" in shown.text
    assert bobs in bob.get(f"{portal.url}/t/{acme.slug}/").text  # the tenant's page links it

    alice = pat_session(acme.pat(acme.admin, scopes=API_SCOPES))
    assert [i["id"] for i in alice.get(f"{base}/").json()] == [bobs, alices]
    assert [i["id"] for i in alice.get(f"{base}/?limit=1").json()] == [bobs]
    assert alice.get(f"{base}/?limit=many").status_code == 400

    charlie = logged_in(portal, globex.admin)
    assert charlie.get(f"{base}/").status_code == 404
    assert charlie.get(f"{portal.url}/t/{acme.slug}/invocations/{bobs}/").status_code == 404
    theirs = f"{portal.url}/api/v1/tenants/{globex.slug}/invocations"
    assert charlie.get(f"{theirs}/").json() == []
    assert charlie.get(f"{theirs}/{bobs}/").status_code == 404


def test_the_invocation_endpoints_are_in_the_openapi_schema(portal: PortalServer) -> None:
    schema = requests.get(f"{portal.url}/api/v1/schema/").text
    assert "/api/v1/tenants/{slug}/invocations/" in schema
    assert "/api/v1/tenants/{slug}/invocations/{invocation_id}/" in schema
