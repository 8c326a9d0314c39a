"""REST API v1 through a real portal process (`manage.py runserver`) over HTTP: session with
CSRF, or a tenant admin's PAT; members see only their tenant, developers only their tokens."""

import re
from collections.abc import Iterator

import grpc
import pytest
import requests
import yaml

from portal import tokens
from portal.models import DEFAULT_SCOPES, SCOPES, AccessToken, Invitation, Membership, Tenant
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from tests.support.oidc import PortalServer
from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer
from tests.support.tenants import Persona

# What an automation token for this API carries: the REAPI scopes and, named, portal:admin.
API_SCOPES = ",".join([*SCOPES, "portal:admin"])


@pytest.fixture(scope="module")
def portal() -> Iterator[PortalServer]:
    with PortalServer() as p:
        yield p


def pat_session(token: str) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    return s


def logged_in(portal: PortalServer, username: str, password: str = "pw-for-api-tests") -> requests.Session:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.get(username=username)
    user.set_password(password)
    user.save()
    s = requests.Session()
    page = s.get(f"{portal.url}/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token
    reply = s.post(
        f"{portal.url}/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)},
        headers={"Referer": f"{portal.url}/login/"},
        allow_redirects=False,
    )
    assert reply.status_code == 302
    return s


def test_the_openapi_schema_is_served(portal: PortalServer) -> None:
    reply = requests.get(f"{portal.url}/api/v1/schema/", timeout=10)
    assert reply.status_code == 200
    schema = yaml.safe_load(reply.text)
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/tenants/{slug}/tokens/" in schema["paths"]
    assert "post" in schema["paths"]["/api/v1/tenants/{slug}/tokens/{token_id}/revoke/"]
    assert schema["components"]["securitySchemes"]["personalAccessToken"]["scheme"] == "bearer"


def test_anonymous_calls_are_401(portal: PortalServer, acme: Persona) -> None:
    reply = requests.get(f"{portal.url}/api/v1/tenants/{acme.slug}/", timeout=10)
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


def test_an_admin_pat_manages_its_tenant(portal: PortalServer, acme: Persona) -> None:
    api = pat_session(acme.pat(scopes=API_SCOPES))
    base = f"{portal.url}/api/v1/tenants/{acme.slug}"
    assert api.get(f"{base}/").json()["role"] == "admin"
    assert api.patch(f"{base}/", json={"cache_mode": "pass-through"}).status_code == 200
    assert Tenant.objects.get(pk=acme.tenant.pk).cache_mode == "pass-through"
    assert api.patch(f"{base}/", json={"cache_mode": "sideways"}).status_code == 400

    created = api.post(
        f"{base}/tokens/", json={"name": "ci", "scopes": ["cas:read", "ac:read"], "cluster": "internal"}
    )
    assert created.status_code == 201
    assert "no-store" in created.headers["Cache-Control"]
    body = created.json()
    assert re.fullmatch(r"aw_pat_[0-9A-Za-z]{36}", body["token"])
    assert f"--remote_header=X-Aspect={body['token']}" in body["bazelrc"]
    assert "--noremote_upload_local_results" in body["bazelrc"]
    listed = api.get(f"{base}/tokens/").json()
    assert any(t["id"] == body["id"] for t in listed) and all("token" not in t for t in listed)
    assert api.post(f"{base}/tokens/{body['id']}/revoke/").json()["status"] == "revoked"

    invited = api.post(f"{base}/members/", json={"email": "newbie@example.com", "role": "developer"})
    assert invited.status_code == 201
    assert Invitation.objects.filter(tenant=acme.tenant, email="newbie@example.com").exists()
    bob = Membership.objects.get(tenant=acme.tenant, user__username=acme.developer)
    assert api.patch(f"{base}/members/{bob.id}/", json={"role": "admin"}).json()["role"] == "admin"
    assert api.delete(f"{base}/members/{bob.id}/").status_code == 204
    assert not Membership.objects.filter(pk=bob.pk).exists()


def test_bad_token_requests_say_what_is_wrong(portal: PortalServer, acme: Persona) -> None:
    api = pat_session(acme.pat(scopes=API_SCOPES))
    reply = api.post(
        f"{portal.url}/api/v1/tenants/{acme.slug}/tokens/", json={"name": "x", "scopes": ["root"]}
    )
    assert reply.status_code == 400
    assert "root" in reply.text
    never = api.post(
        f"{portal.url}/api/v1/tenants/{acme.slug}/tokens/",
        json={"name": "x", "scopes": ["cas:read"], "expires_in_days": 0},
    )
    assert never.status_code == 400 and "never expire" in never.text


def test_a_developers_pat_does_not_open_the_api(portal: PortalServer, acme: Persona) -> None:
    reply = pat_session(acme.pat(acme.developer)).get(f"{portal.url}/api/v1/tenants/{acme.slug}/")
    assert reply.status_code == 403
    assert "tenant admins" in reply.text


def test_a_revoked_or_malformed_pat_is_401(portal: PortalServer, acme: Persona) -> None:
    issued = tokens.issue(acme.tenant, acme.admin, name="old", scopes=API_SCOPES)
    tokens.revoke(issued.token)
    for token in (issued.secret, "aw_pat_" + "x" * 36, "not-a-token"):
        assert pat_session(token).get(f"{portal.url}/api/v1/tenants/").status_code == 401, token


def test_a_pat_opens_only_its_own_tenant(portal: PortalServer, acme: Persona, globex: Persona) -> None:
    api = pat_session(acme.pat(scopes=API_SCOPES))
    assert [t["slug"] for t in api.get(f"{portal.url}/api/v1/tenants/").json()] == [acme.slug]
    assert api.get(f"{portal.url}/api/v1/tenants/{globex.slug}/").status_code == 404
    theirs = tokens.issue(globex.tenant, globex.admin, name="theirs").token
    assert api.post(f"{portal.url}/api/v1/tenants/{acme.slug}/tokens/{theirs.id}/revoke/").status_code == 404
    assert AccessToken.objects.get(pk=theirs.pk).revoked_at is None


def test_a_session_needs_csrf_and_developers_see_only_their_tokens(
    portal: PortalServer, acme: Persona
) -> None:
    alices = tokens.issue(acme.tenant, acme.admin, name="alice").token
    bobs = tokens.issue(acme.tenant, acme.developer or "", name="bob").token
    bob = logged_in(portal, acme.developer or "")
    base = f"{portal.url}/api/v1/tenants/{acme.slug}"
    listed = bob.get(f"{base}/tokens/").json()
    assert [t["id"] for t in listed] == [bobs.id]
    assert bob.get(f"{base}/tokens/{alices.id}/").status_code == 404

    no_csrf = bob.post(f"{base}/tokens/{bobs.id}/revoke/")
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    assert AccessToken.objects.get(pk=bobs.pk).revoked_at is None
    headers = {"X-CSRFToken": str(bob.cookies["csrftoken"]), "Referer": f"{portal.url}/"}
    assert bob.post(f"{base}/tokens/{alices.id}/revoke/", headers=headers).status_code == 404
    assert bob.post(f"{base}/tokens/{bobs.id}/revoke/", headers=headers).status_code == 200
    assert AccessToken.objects.get(pk=alices.pk).revoked_at is None
    assert bob.patch(f"{base}/", json={"cache_mode": "pass-through"}, headers=headers).status_code == 403
    assert bob.post(f"{base}/members/", json={"email": "x@example.com"}, headers=headers).status_code == 403
    assert bob.get(f"{base}/tokens/{bobs.id}/revoke/").status_code == 405


def test_an_outsiders_session_gets_404(portal: PortalServer, acme: Persona, globex: Persona) -> None:
    charlie = logged_in(portal, globex.admin)
    assert charlie.get(f"{portal.url}/api/v1/tenants/{acme.slug}/tokens/").status_code == 404
    assert charlie.get(f"{portal.url}/api/v1/tenants/{acme.slug}/members/").status_code == 404


def test_it_refuses_a_pat_without_the_portal_admin_scope(portal: PortalServer, acme: Persona) -> None:
    base = f"{portal.url}/api/v1/tenants/{acme.slug}"
    before = AccessToken.objects.filter(tenant=acme.tenant).count()
    for scopes in (",".join(SCOPES), "cas:read,ac:read"):
        api = pat_session(acme.pat(scopes=scopes))
        listed = api.get(f"{base}/tokens/")
        assert listed.status_code == 403, scopes
        assert "lacks the portal:admin scope" in listed.json()["detail"]
        created = api.post(f"{base}/tokens/", json={"name": "escalate", "scopes": list(SCOPES)})
        assert created.status_code == 403, scopes
        assert api.patch(f"{base}/", json={"cache_mode": "pass-through"}).status_code == 403
    assert AccessToken.objects.filter(tenant=acme.tenant).count() == before + 2
    assert not AccessToken.objects.filter(tenant=acme.tenant, name="escalate").exists()
    assert Tenant.objects.get(pk=acme.tenant.pk).cache_mode == "independent"


def test_it_refuses_to_mint_a_token_with_scopes_the_caller_lacks(
    portal: PortalServer, acme: Persona, external_server: ReapiServer
) -> None:
    api = pat_session(acme.pat(scopes="cas:read,ac:read,portal:admin"))
    base = f"{portal.url}/api/v1/tenants/{acme.slug}"
    reply = api.post(f"{base}/tokens/", json={"name": "full", "scopes": list(SCOPES)})
    assert reply.status_code == 403
    detail = reply.json()["detail"]
    assert "scope(s) it lacks: cas:write, ac:write, execute" in detail
    assert not AccessToken.objects.filter(tenant=acme.tenant, name="full").exists()

    # Within its own scopes it may mint, and what it mints still cannot write the action cache.
    reply = api.post(f"{base}/tokens/", json={"name": "reader", "scopes": ["cas:read", "ac:read"]})
    assert reply.status_code == 201
    assert AccessToken.objects.get(pk=reply.json()["id"]).scope_list == ["cas:read", "ac:read"]
    with external_server.channel() as channel:
        client = Client(channel, reply.json()["token"])
        with pytest.raises(grpc.RpcError) as err:
            client.update_action_result(digest(b"action"), re_pb2.ActionResult(exit_code=0))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "ac:write" in (err.value.details() or "")


def test_it_refuses_to_mint_a_token_that_outlives_the_caller(portal: PortalServer, acme: Persona) -> None:
    api = pat_session(acme.pat(scopes=API_SCOPES, days=7))
    parent = AccessToken.objects.get(tenant=acme.tenant, name="test", scopes=API_SCOPES)
    base = f"{portal.url}/api/v1/tenants/{acme.slug}"
    longer = api.post(f"{base}/tokens/", json={"name": "long", "scopes": ["cas:read"], "expires_in_days": 8})
    assert longer.status_code == 403
    assert "would outlive token" in longer.json()["detail"]
    assert "at most 6 day(s)" in longer.json()["detail"]
    acme.tenant.allow_non_expiring_tokens = True
    acme.tenant.save(update_fields=["allow_non_expiring_tokens"])
    never = api.post(f"{base}/tokens/", json={"name": "long", "scopes": ["cas:read"], "expires_in_days": 0})
    assert never.status_code == 403 and "would outlive" in never.json()["detail"]
    assert not AccessToken.objects.filter(tenant=acme.tenant, name="long").exists()

    short = api.post(f"{base}/tokens/", json={"name": "short", "scopes": ["cas:read"], "expires_in_days": 6})
    assert short.status_code == 201
    child = AccessToken.objects.get(pk=short.json()["id"])
    assert child.expires_at is not None and parent.expires_at is not None
    assert child.expires_at <= parent.expires_at
    # Asked for no expiry, it gets the default (90 days) cut to the caller's own.
    default = api.post(f"{base}/tokens/", json={"name": "default", "scopes": ["cas:read"]})
    assert default.status_code == 201
    assert AccessToken.objects.get(pk=default.json()["id"]).expires_at == parent.expires_at

    # A token that never expires (the tenant allows it) may mint tokens of any allowed life.
    forever = pat_session(acme.pat(scopes=API_SCOPES, days=0))
    made = forever.post(
        f"{base}/tokens/", json={"name": "year", "scopes": ["cas:read"], "expires_in_days": 365}
    )
    assert made.status_code == 201
    too_long = forever.post(
        f"{base}/tokens/", json={"name": "x", "scopes": ["cas:read"], "expires_in_days": 10**9}
    )
    assert too_long.status_code == 400 and "3650" in too_long.text


def test_portal_admin_grants_nothing_on_the_grpc_endpoint(
    external_server: ReapiServer, acme: Persona
) -> None:
    with external_server.channel() as channel:
        only_api = Client(channel, acme.pat(scopes="portal:admin"))
        caps = only_api.get_capabilities()
        assert not caps.cache_capabilities.action_cache_update_capabilities.update_enabled
        assert not caps.execution_capabilities.exec_enabled
        for call in (
            lambda: only_api.missing(digest(b"x")),
            lambda: only_api.get_action_result(digest(b"action")),
            lambda: only_api.update_action_result(digest(b"action"), re_pb2.ActionResult()),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    token = AccessToken.objects.get(tenant=acme.tenant, scopes="portal:admin")
    assert token.first_used_at is not None  # it authenticated: refused for its scopes, not unknown


def test_a_token_made_without_scopes_gets_the_default_set_and_both_snippets(
    portal: PortalServer, acme: Persona
) -> None:
    api = pat_session(acme.pat(scopes=API_SCOPES))
    base = f"{portal.url}/api/v1/tenants/{acme.slug}"
    made = api.post(f"{base}/tokens/", json={"name": "workstation"})
    assert made.status_code == 201
    body = made.json()
    assert body["scopes"] == list(DEFAULT_SCOPES)
    assert "build --remote_cache=" in body["bazelrc"]
    assert "build --remote_executor=" in body["bazelrc_execution"]
    reader = api.post(f"{base}/tokens/", json={"name": "reader", "scopes": ["cas:read", "ac:read"]})
    assert reader.status_code == 201 and reader.json()["bazelrc_execution"] is None
    again = api.post(f"{base}/tokens/", json={"name": "Workstation"})
    assert again.status_code == 400
    assert "already has an active token named 'workstation'" in again.json()["detail"]
    assert AccessToken.objects.filter(tenant=acme.tenant, name__iexact="workstation").count() == 1


def test_an_admin_sets_what_ci_accepts_and_running_servers_follow(
    portal: PortalServer, acme: Persona, external_server: ReapiServer, internal_server: ReapiServer
) -> None:
    from tests.support.storage_helpers import action_with_outputs, within

    api = pat_session(acme.pat(scopes=API_SCOPES))
    base = f"{portal.url}/api/v1/tenants/{acme.slug}"
    tenant = api.get(f"{base}/").json()
    assert (tenant["ci_accepts"], tenant["ci_confirmations"]) == ("all", 2)
    assert api.patch(f"{base}/", json={"cache_mode": "pass-through"}).json()["ci_accepts"] == "all"
    ws = Client(external_server.channel(), acme.pat(acme.developer))
    ci = Client(internal_server.channel(), acme.pat(acme.admin))
    action, result = action_with_outputs(ws, b"a workstation's output")
    ws.update_action_result(action, result)
    assert ci.get_action_result(action) == result

    def ci_hit() -> bool:
        try:
            ci.get_action_result(action)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            return False
        return True

    reply = api.patch(f"{base}/", json={"ci_accepts": "none"})
    assert reply.status_code == 200 and reply.json()["ci_accepts"] == "none"
    within(5.0, lambda: True if not ci_hit() else None)
    reply = api.patch(f"{base}/", json={"ci_accepts": "confirmed", "ci_confirmations": 3})
    assert (reply.json()["ci_accepts"], reply.json()["ci_confirmations"]) == ("confirmed", 3)
    assert api.patch(f"{base}/", json={"ci_accepts": "some"}).status_code == 400
    assert api.patch(f"{base}/", json={"ci_confirmations": 1}).status_code == 400
    assert api.patch(f"{base}/", json={}).status_code == 400
    assert api.patch(f"{base}/", json={"ci_accepts": "all"}).json()["ci_confirmations"] == 3
    within(5.0, lambda: True if ci_hit() else None)
    stored = Tenant.objects.get(pk=acme.tenant.pk)
    assert (stored.cache_mode, stored.ci_accepts, stored.ci_confirmations) == ("pass-through", "all", 3)
    developer = pat_session(acme.pat(acme.developer, scopes=",".join(SCOPES)))
    assert developer.patch(f"{base}/", json={"ci_accepts": "all"}).status_code == 403
