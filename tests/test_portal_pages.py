"""The portal's pages through Django's test client: who may see and do what.

Personas: alice admin and bob developer of acme, charlie admin of globex (an outsider to acme).
"""

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from portal import tokens
from portal.models import AccessToken, AuditEvent, Invitation, Membership, Tenant
from tests.support.tenants import Persona


def client_for(username: str, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(get_user_model().objects.get(username=username))
    return client


def csrf_token(client: Client, url: str) -> str:
    page = client.get(url)
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert match, f"no CSRF token on {url}"
    return match.group(1)


def test_it_sends_anonymous_visitors_to_the_login_page() -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_it_offers_local_login_when_no_provider_is_configured() -> None:
    user = get_user_model().objects.create_user("local-dora", password="correct horse battery")
    client = Client()
    page = client.get("/login/")
    assert page.status_code == 200
    assert 'name="password"' in page.content.decode()
    assert 'for="id_username"' in page.content.decode()
    response = client.post("/login/", {"username": "local-dora", "password": "correct horse battery"})
    assert response.status_code == 302
    assert AuditEvent.objects.filter(action="login", actor=user, detail__method="password").exists()


def test_a_local_login_accepts_an_invitation_for_the_accounts_email(acme: Persona) -> None:
    Invitation.objects.create(tenant=acme.tenant, email="erin@example.com", role="developer")
    get_user_model().objects.create_user("local-erin", email="Erin@example.com", password="p4ssw0rd-long")
    Client().post("/login/", {"username": "local-erin", "password": "p4ssw0rd-long"})
    assert Membership.objects.filter(
        tenant=acme.tenant, user__username="local-erin", role="developer"
    ).exists()


def test_a_developer_sees_the_tenant_but_not_admin_pages(acme: Persona) -> None:
    bob = client_for(acme.developer or "")
    assert bob.get(f"/t/{acme.slug}/").status_code == 200
    assert bob.get(f"/t/{acme.slug}/tokens/").status_code == 200
    assert bob.get(f"/t/{acme.slug}/members/").status_code == 200
    assert bob.get(f"/t/{acme.slug}/usage/").status_code == 200
    assert bob.get(f"/t/{acme.slug}/bazelrc/").status_code == 200
    for admin_page in ("cache-mode/", "audit/", "ci/"):
        assert bob.get(f"/t/{acme.slug}/{admin_page}").status_code == 403, admin_page
    assert bob.post(f"/t/{acme.slug}/cache-mode/", {"cache_mode": "pass-through"}).status_code == 403
    assert Tenant.objects.get(pk=acme.tenant.pk).cache_mode == "independent"


def test_an_outsider_gets_404_for_every_page_of_another_tenant(acme: Persona, globex: Persona) -> None:
    charlie = client_for(globex.admin)
    for sub in ("", "tokens/", "members/", "usage/", "bazelrc/", "cache-mode/", "audit/", "ci/"):
        assert charlie.get(f"/t/{acme.slug}/{sub}").status_code == 404, sub
    assert charlie.get("/t/no-such-tenant/").status_code == 404


def test_an_admin_changes_the_cache_mode_and_it_is_audited(acme: Persona) -> None:
    alice = client_for(acme.admin)
    response = alice.post(f"/t/{acme.slug}/cache-mode/", {"cache_mode": "pass-through"})
    assert response.status_code == 302
    assert Tenant.objects.get(pk=acme.tenant.pk).cache_mode == "pass-through"
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="tenant.mode").exists()
    assert alice.post(f"/t/{acme.slug}/cache-mode/", {"cache_mode": "bogus"}).status_code == 200


def test_the_token_is_shown_once_with_no_store_beside_its_bazelrc(acme: Persona) -> None:
    bob = client_for(acme.developer or "")
    response = bob.post(
        f"/t/{acme.slug}/tokens/",
        {"name": "laptop", "scopes": ["cas:read", "ac:read"], "expires_in_days": 30, "cluster": "external"},
    )
    # Post/redirect/get: the PAT is on the page the POST redirects to, never in its URL.
    assert response.status_code == 303
    assert not re.search(r"aw_pat_[0-9A-Za-z]{36}", response["Location"])
    shown = bob.get(response["Location"])
    assert shown.status_code == 200
    assert "no-store" in shown["Cache-Control"]
    body = shown.content.decode()
    pat = re.search(r"aw_pat_[0-9A-Za-z]{36}", body)
    assert pat, "the PAT is on the page"
    assert f"build --remote_header=X-Aspect={pat.group(0)}" in body
    assert "build --noremote_upload_local_results" in body  # read-only token, read-only snippet
    assert pat.group(0) not in str(response.cookies) and pat.group(0) not in str(shown.cookies)
    token = AccessToken.objects.get(prefix=pat.group(0)[:13])
    assert token.user.get_username() == acme.developer and token.scope_list == ["cas:read", "ac:read"]
    listing = bob.get(f"/t/{acme.slug}/tokens/").content.decode()
    assert token.prefix in listing and pat.group(0) not in listing


def test_a_bad_token_form_says_what_is_wrong(acme: Persona) -> None:
    bob = client_for(acme.developer or "")
    response = bob.post(f"/t/{acme.slug}/tokens/", {"name": "", "expires_in_days": 0, "cluster": "external"})
    assert response.status_code == 400
    body = response.content.decode()
    assert "This field is required" in body
    assert not re.search(r"aw_pat_[0-9A-Za-z]{36}", body)


def test_a_developer_sees_and_revokes_only_their_own_tokens(acme: Persona) -> None:
    alices = tokens.issue(acme.tenant, acme.admin, name="alice-ci").token
    bobs = tokens.issue(acme.tenant, acme.developer or "", name="bob-laptop").token
    bob = client_for(acme.developer or "")
    listing = bob.get(f"/t/{acme.slug}/tokens/").content.decode()
    assert bobs.prefix in listing and alices.prefix not in listing
    assert bob.post(f"/t/{acme.slug}/tokens/{alices.id}/revoke/").status_code == 404
    assert AccessToken.objects.get(pk=alices.pk).revoked_at is None
    assert bob.post(f"/t/{acme.slug}/tokens/{bobs.id}/revoke/").status_code == 302
    assert AccessToken.objects.get(pk=bobs.pk).revoked_at is not None


def test_an_admin_revokes_a_members_token(acme: Persona) -> None:
    bobs = tokens.issue(acme.tenant, acme.developer or "", name="bob-laptop").token
    alice = client_for(acme.admin)
    assert bobs.prefix in alice.get(f"/t/{acme.slug}/tokens/").content.decode()
    assert alice.post(f"/t/{acme.slug}/tokens/{bobs.id}/revoke/").status_code == 302
    assert AccessToken.objects.get(pk=bobs.pk).revoked_at is not None
    event = AuditEvent.objects.get(tenant=acme.tenant, action="token.revoke", token_prefix=bobs.prefix)
    assert event.actor is not None and event.actor.get_username() == acme.admin


def test_revoke_refuses_get_with_405(acme: Persona) -> None:
    bobs = tokens.issue(acme.tenant, acme.developer or "", name="bob-laptop").token
    response = client_for(acme.developer or "").get(f"/t/{acme.slug}/tokens/{bobs.id}/revoke/")
    assert response.status_code == 405
    assert AccessToken.objects.get(pk=bobs.pk).revoked_at is None


def test_revoke_without_csrf_is_403_with_a_clear_page(acme: Persona) -> None:
    bobs = tokens.issue(acme.tenant, acme.developer or "", name="bob-laptop").token
    bob = client_for(acme.developer or "", csrf=True)
    response = bob.post(f"/t/{acme.slug}/tokens/{bobs.id}/revoke/")
    assert response.status_code == 403
    assert "CSRF" in response.content.decode()
    assert AccessToken.objects.get(pk=bobs.pk).revoked_at is None
    token = csrf_token(bob, f"/t/{acme.slug}/tokens/")
    ok = bob.post(f"/t/{acme.slug}/tokens/{bobs.id}/revoke/", {"csrfmiddlewaretoken": token})
    assert ok.status_code == 302


def test_another_tenants_token_is_404_even_for_an_admin(acme: Persona, globex: Persona) -> None:
    theirs = tokens.issue(globex.tenant, globex.admin, name="globex-ci").token
    alice = client_for(acme.admin)
    assert alice.post(f"/t/{acme.slug}/tokens/{theirs.id}/revoke/").status_code == 404
    assert alice.post(f"/t/{globex.slug}/tokens/{theirs.id}/revoke/").status_code == 404
    assert AccessToken.objects.get(pk=theirs.pk).revoked_at is None


def test_admins_invite_change_roles_and_remove_members(acme: Persona) -> None:
    alice = client_for(acme.admin)
    bob_membership = Membership.objects.get(tenant=acme.tenant, user__username=acme.developer)
    bobs = tokens.issue(acme.tenant, acme.developer or "", name="bob-laptop").token
    assert (
        alice.post(
            f"/t/{acme.slug}/members/invite/", {"email": "Dan@Example.com", "role": "admin"}
        ).status_code
        == 302
    )
    assert Invitation.objects.filter(tenant=acme.tenant, email="dan@example.com", role="admin").exists()
    assert (
        alice.post(f"/t/{acme.slug}/members/{bob_membership.id}/role/", {"role": "admin"}).status_code == 302
    )
    assert Membership.objects.get(pk=bob_membership.pk).role == "admin"
    assert alice.post(f"/t/{acme.slug}/members/{bob_membership.id}/remove/").status_code == 302
    assert not Membership.objects.filter(pk=bob_membership.pk).exists()
    assert AccessToken.objects.get(pk=bobs.pk).revoked_at is not None, "a removed member's tokens are revoked"


def test_the_last_admin_cannot_be_demoted(acme: Persona) -> None:
    alice = client_for(acme.admin)
    mine = Membership.objects.get(tenant=acme.tenant, user__username=acme.admin)
    response = alice.post(f"/t/{acme.slug}/members/{mine.id}/role/", {"role": "developer"}, follow=True)
    assert "at least one admin" in response.content.decode()
    assert Membership.objects.get(pk=mine.pk).role == "admin"


def test_developers_cannot_manage_members(acme: Persona) -> None:
    bob = client_for(acme.developer or "")
    mine = Membership.objects.get(tenant=acme.tenant, user__username=acme.admin)
    assert (
        bob.post(f"/t/{acme.slug}/members/invite/", {"email": "x@example.com", "role": "admin"}).status_code
        == 403
    )
    assert bob.post(f"/t/{acme.slug}/members/{mine.id}/remove/").status_code == 403
    assert Membership.objects.filter(pk=mine.pk).exists()


def test_another_tenants_member_is_404(acme: Persona, globex: Persona) -> None:
    theirs = Membership.objects.get(tenant=globex.tenant)
    alice = client_for(acme.admin)
    assert alice.post(f"/t/{acme.slug}/members/{theirs.id}/remove/").status_code == 404
    assert Membership.objects.filter(pk=theirs.pk).exists()


def test_the_audit_log_shows_prefixes_never_tokens(acme: Persona) -> None:
    alice = client_for(acme.admin)
    created = alice.post(
        f"/t/{acme.slug}/tokens/",
        {"name": "ci", "scopes": ["cas:read"], "expires_in_days": 7, "cluster": "internal"},
        follow=True,
    )
    pat = re.search(r"aw_pat_[0-9A-Za-z]{36}", created.content.decode())
    assert pat
    log = alice.get(f"/t/{acme.slug}/audit/").content.decode()
    assert "token.issue" in log and pat.group(0)[:13] in log and pat.group(0) not in log


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "cluster=internal&execution=1&download=minimal&timeout=120&read_only=on&instance_name=on",
            [
                "build --remote_executor=grpc://127.0.0.1:8981",
                "build --remote_download_minimal",
                "build --remote_timeout=120",
                "build --noremote_upload_local_results",
                "build --remote_instance_name=",
            ],
        ),
        (
            "cluster=external&execution=0&download=toplevel&timeout=60",
            ["build --remote_cache=grpc://127.0.0.1:8980", "build --remote_download_toplevel"],
        ),
    ],
)
def test_the_bazelrc_builder_renders_the_choices(acme: Persona, query: str, expected: list[str]) -> None:
    body = client_for(acme.developer or "").get(f"/t/{acme.slug}/bazelrc/?{query}").content.decode()
    for line in expected:
        assert line in body


def test_the_bazelrc_builder_rejects_a_bad_timeout(acme: Persona) -> None:
    response = client_for(acme.developer or "").get(
        f"/t/{acme.slug}/bazelrc/?cluster=external&execution=0&download=all&timeout=0"
    )
    assert response.status_code == 400
    assert "greater than or equal to 1" in response.content.decode()


def test_pages_label_every_form_control(acme: Persona) -> None:
    alice = client_for(acme.admin)
    for sub in ("tokens/", "members/", "cache-mode/", "bazelrc/"):
        body = alice.get(f"/t/{acme.slug}/{sub}").content.decode()
        ids = re.findall(
            r'<(?:input|select|textarea)(?![^>]*type="(?:hidden|submit)")[^>]*\bid="([^"]+)"', body
        )
        assert ids, sub
        for control in ids:
            assert f'for="{control}"' in body, f"{sub}: #{control} has no label"


def test_admins_trust_ci_runners_by_claim(acme: Persona) -> None:
    from django.test import override_settings

    from portal.models import CiIdentity

    alice = client_for(acme.admin)
    bob_id = get_user_model().objects.get(username=acme.developer).pk
    with override_settings(OIDC_GRPC_ISSUER="https://ci.example.com", OIDC_GRPC_AUDIENCE="cache"):
        page = alice.get(f"/t/{acme.slug}/ci/").content.decode()
        assert "https://ci.example.com" in page and 'for="id_claim"' in page
        form = {
            "name": "main",
            "claim": "repository",
            "value": "acme/app",
            "member": bob_id,
            "scopes": ["cas:read"],
        }
        assert alice.post(f"/t/{acme.slug}/ci/", form).status_code == 302
        rule = CiIdentity.objects.get(tenant=acme.tenant, value="acme/app")
        assert (
            rule.user_id == bob_id and rule.issuer == "https://ci.example.com" and rule.scopes == "cas:read"
        )
        assert alice.post(f"/t/{acme.slug}/ci/", form).status_code == 400  # already trusted
        assert (
            client_for(acme.developer or "").post(f"/t/{acme.slug}/ci/{rule.id}/remove/").status_code == 403
        )
        assert alice.post(f"/t/{acme.slug}/ci/{rule.id}/remove/").status_code == 302
    assert not CiIdentity.objects.filter(pk=rule.pk).exists()


def test_a_superuser_creates_a_tenant_and_becomes_its_admin() -> None:
    import uuid

    root = get_user_model().objects.create_superuser(f"root-{uuid.uuid4().hex[:6]}", password="x" * 12)
    client = Client()
    client.force_login(root)
    slug = f"made-{uuid.uuid4().hex[:6]}"
    response = client.post("/", {"slug": slug})
    assert response.status_code == 302 and response["Location"] == f"/t/{slug}/"
    assert Membership.objects.get(tenant__slug=slug, user=root).role == "admin"
    assert client.post("/", {"slug": "blobs"}).status_code == 200  # reserved: the form says why


def test_only_superusers_create_tenants(acme: Persona) -> None:
    assert client_for(acme.admin).post("/", {"slug": "sneaky"}).status_code == 403
    assert not Tenant.objects.filter(slug="sneaky").exists()


def test_the_token_form_offers_portal_admin_to_admins_unticked_with_a_warning(acme: Persona) -> None:
    alice = client_for(acme.admin)
    page = alice.get(f"/t/{acme.slug}/tokens/").content.decode()
    box = re.search(r'<input type="checkbox" name="portal_admin"[^>]*>', page)
    assert box and "checked" not in box.group(0)
    assert "Warning: whoever holds this token can create tokens" in page
    form = {"name": "bazel", "scopes": ["cas:read", "ac:read"], "expires_in_days": 30, "cluster": "external"}
    assert alice.post(f"/t/{acme.slug}/tokens/", form).status_code == 303
    assert AccessToken.objects.get(tenant=acme.tenant, name="bazel").scope_list == ["cas:read", "ac:read"]
    response = alice.post(f"/t/{acme.slug}/tokens/", {**form, "name": "automation", "portal_admin": "on"})
    assert response.status_code == 303
    token = AccessToken.objects.get(tenant=acme.tenant, name="automation")
    assert token.scope_list == ["cas:read", "ac:read", "portal:admin"]


def test_the_token_form_gives_developers_no_portal_admin(acme: Persona) -> None:
    bob = client_for(acme.developer or "")
    assert 'name="portal_admin"' not in bob.get(f"/t/{acme.slug}/tokens/").content.decode()
    form = {"name": "sneaky", "scopes": ["cas:read"], "expires_in_days": 30, "cluster": "external"}
    assert bob.post(f"/t/{acme.slug}/tokens/", {**form, "portal_admin": "on"}).status_code == 303
    assert AccessToken.objects.get(tenant=acme.tenant, name="sneaky").scope_list == ["cas:read"]
