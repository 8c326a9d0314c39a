"""Credentials on the gRPC endpoint, over a real socket (docs/architecture.md, the request path)."""

from datetime import timedelta

import grpc
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from portal import pats, tokens
from portal.models import AccessToken, AuditEvent
from reapi import auth
from reapi.errors import Unauthenticated
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from tests.support.polling import wait_for
from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer
from tests.support.tenants import Persona


def rpc_error(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_it_serves_a_valid_token_in_x_aspect(external_server: ReapiServer, acme: Persona) -> None:
    client = Client(external_server.channel(), acme.pat())
    assert client.get_capabilities().cache_capabilities.action_cache_update_capabilities.update_enabled


def test_it_accepts_a_bearer_pat(external_server: ReapiServer, acme: Persona) -> None:
    ch = external_server.channel()
    stub = Client(ch, None).capabilities
    reply = stub.GetCapabilities(
        re_pb2.GetCapabilitiesRequest(), metadata=(("authorization", f"Bearer {acme.pat()}"),)
    )
    assert reply.cache_capabilities.digest_functions == [re_pb2.DigestFunction.SHA256]


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "no credential"),
        ((("x-aspect", "hunter2"),), "not a personal access token"),
        ((("x-aspect", "aw_pat_tooshort"),), "not a personal access token"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "Bearer"),
    ],
)
def test_it_rejects_missing_or_malformed_credentials(
    external_server: ReapiServer, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    stub = Client(external_server.channel(), None).cas
    err = rpc_error(lambda: stub.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(), metadata=metadata))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert message in (err.details() or "")


def test_it_rejects_a_checksum_typo_over_the_wire(external_server: ReapiServer, acme: Persona) -> None:
    pat = acme.pat()
    typo = pat[:-1] + ("A" if pat[-1] != "A" else "B")
    err = rpc_error(lambda: Client(external_server.channel(), typo).get_capabilities())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "checksum" in (err.details() or "")


def test_a_checksum_typo_costs_no_database_query(acme: Persona) -> None:
    pat = acme.pat()
    typo = pat[:-1] + ("A" if pat[-1] != "A" else "B")
    random_token = "aw_pat_" + "a" * 36
    with CaptureQueriesContext(connection) as queries:
        for bad in (typo, random_token, "aw_pat_x", "nonsense"):
            with pytest.raises(Unauthenticated):
                auth.authenticate((("x-aspect", bad),))
    assert len(queries) == 0


def test_it_rejects_an_unknown_but_well_formed_token(external_server: ReapiServer) -> None:
    err = rpc_error(lambda: Client(external_server.channel(), pats.generate()).get_capabilities())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown personal access token" in (err.details() or "")


def test_it_rejects_an_expired_token(external_server: ReapiServer, acme: Persona) -> None:
    issued = tokens.issue(acme.tenant, acme.admin, name="old")
    AccessToken.objects.filter(pk=issued.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    err = rpc_error(lambda: Client(external_server.channel(), issued.secret).get_capabilities())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (err.details() or "")


def test_a_revocation_reaches_a_running_server_within_five_seconds(
    external_server: ReapiServer, acme: Persona
) -> None:
    issued = tokens.issue(acme.tenant, acme.developer or "", name="soon revoked")
    client = Client(external_server.channel(), issued.secret)
    client.get_capabilities()  # now cached by the server
    tokens.revoke(issued.token)

    def refused() -> grpc.RpcError | None:
        try:
            client.get_capabilities()
        except grpc.RpcError as err:
            return err
        return None

    # The server trusts a checked credential for REAPI_CREDENTIAL_TTL_SECONDS (2): the refusal
    # must come once that has passed, well within the five seconds the product promises.
    err = wait_for(refused, timeout=5, interval=0.1)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (err.details() or "")


def test_it_notes_first_and_last_use(external_server: ReapiServer, acme: Persona) -> None:
    issued = tokens.issue(acme.tenant, acme.admin, name="fresh")
    assert issued.token.last_used_at is None
    Client(external_server.channel(), issued.secret).get_capabilities()
    issued.token.refresh_from_db()
    assert issued.token.first_used_at is not None and issued.token.last_used_at is not None
    events = AuditEvent.objects.filter(action="token.first_use", token_prefix=issued.token.prefix)
    assert events.count() == 1


def test_a_token_without_the_scope_is_denied(external_server: ReapiServer, acme: Persona) -> None:
    client = Client(external_server.channel(), acme.pat(scopes="ac:read"))
    err = rpc_error(lambda: client.missing(digest(b"x")))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "cas:read" in (err.details() or "")


def test_a_read_only_token_cannot_write_and_is_told_so(external_server: ReapiServer, acme: Persona) -> None:
    client = Client(external_server.channel(), acme.pat(scopes="cas:read,ac:read"))
    caps = client.get_capabilities()
    assert caps.cache_capabilities.action_cache_update_capabilities.update_enabled is False
    for call, scope in [
        (lambda: client.upload(b"poison"), "cas:write"),
        (lambda: client.write(b"poison"), "cas:write"),
        (
            lambda: client.update_action_result(digest(b"action"), re_pb2.ActionResult(exit_code=0)),
            "ac:write",
        ),
    ]:
        err = rpc_error(call)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert scope in (err.details() or "")
    writer = Client(external_server.channel(), acme.pat())
    assert writer.missing(digest(b"poison")) == [digest(b"poison")]


def test_another_tenants_instance_name_is_denied(
    external_server: ReapiServer, acme: Persona, globex: Persona
) -> None:
    client = Client(external_server.channel(), acme.pat(), instance=globex.slug)
    err = rpc_error(lambda: client.missing(digest(b"x")))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert globex.slug in (err.details() or "")
    own = Client(external_server.channel(), acme.pat(), instance=acme.slug)
    assert own.missing(digest(b"x")) == [digest(b"x")]


def test_health_needs_no_credential(external_server: ReapiServer) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(external_server.channel())
    reply = stub.Check(
        health_pb2.HealthCheckRequest(service="build.bazel.remote.execution.v2.ContentAddressableStorage")
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_calls_of_two_tenants_interleaved_on_one_channel_each_reach_only_their_own(
    external_server: ReapiServer, acme: Persona, globex: Persona
) -> None:
    # The edge reuses what it made for a method and a principal (reapi.admission): the next
    # call of another credential, on the same connection, must not get the one before's.
    channel = external_server.channel()
    ours, theirs = Client(channel, acme.pat()), Client(channel, globex.pat())
    mine, other = b"acme's own blob", b"globex's own blob"
    ours.upload(mine)
    theirs.upload(other)
    for _ in range(20):
        assert ours.missing(digest(mine), digest(other)) == [digest(other)]
        assert theirs.missing(digest(mine), digest(other)) == [digest(mine)]
        assert ours.read(digest(mine)) == mine
        assert rpc_error(lambda: theirs.read(digest(mine))).code() == grpc.StatusCode.NOT_FOUND
