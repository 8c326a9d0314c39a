"""The portal as people meet it, through Django's test client: the audit log lists each event
once and in words, a new token is shown once after a redirect (a reload mints nothing), error
pages are portal pages, one default scope set, admins issue tokens for members and make local
accounts, destructive acts are asked first, and names and slugs follow one rule.

Personas: alice admin and bob developer of acme, charlie admin of globex (an outsider to acme).
"""

import json
import re
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import Client, RequestFactory

from portal import forms, invitations, tenancy, tokens
from portal.models import DEFAULT_SCOPES, AccessToken, AuditEvent, Invitation, LocalAccount, Membership
from tests.support.servers import manage
from tests.support.tenants import Persona

PAT = re.compile(r"aw_pat_[0-9A-Za-z]{36}")


def client_for(username: str) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    return client


def create_token(client: Client, slug: str, **fields: object) -> str:
    """POST the token form; returns where it redirects (the page that shows the token)."""
    form = {"name": "laptop", "scopes": list(DEFAULT_SCOPES), "expires_in_days": 30, "cluster": "external"}
    response = client.post(f"/t/{slug}/tokens/", {**form, **fields})
    assert response.status_code == 303, response.content.decode()[:2000]
    return str(response["Location"])


# --- Audit log ----------------------------------------------------------------------------------


def test_an_event_by_a_member_of_several_tenants_is_listed_once(acme: Persona) -> None:
    for _ in range(3):  # alice belongs to four tenants in all
        other = tenancy.create_tenant(f"other-{uuid.uuid4().hex[:8]}")
        tenancy.add_member(other, acme.admin, "admin")
    alice = client_for(acme.admin)
    bob = Membership.objects.get(tenant=acme.tenant, user__username=acme.developer)
    assert alice.post(f"/t/{acme.slug}/members/{bob.id}/remove/").status_code == 302
    # A sign-in carries no tenant: the log shows it through alice's memberships.
    alice = Client()
    user = get_user_model().objects.get(username=acme.admin)
    user.set_password("alice-password-1")
    user.save()
    assert alice.post("/login/", {"username": acme.admin, "password": "alice-password-1"}).status_code == 302

    response = alice.get(f"/t/{acme.slug}/audit/")
    assert response.status_code == 200
    table = response.content.decode().split('id="audit-table"', 1)[1]
    assert table.count("<code>member.remove</code>") == 1
    assert table.count("<code>login</code>") == 1
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="member.remove").count() == 1


def test_the_audit_log_says_what_happened_in_words(acme: Persona) -> None:
    alice = client_for(acme.admin)
    create_token(alice, acme.slug, name="build farm", scopes=["cas:read", "ac:read"])
    manage("token", "issue", "--tenant", acme.slug, "--user", acme.developer or "", "--name", "from-cli")

    body = alice.get(f"/t/{acme.slug}/audit/").content.decode()
    assert "scopes cas:read, ac:read" in body
    assert "[" not in body.split('id="audit-table"', 1)[1].split("</table>", 1)[0], "no Python list"
    assert "build farm" in body and "from-cli" in body  # the tokens' names
    assert "command line" in body  # what manage.py did
    assert f"for {acme.developer}" in body


# --- A new token: shown once, after a redirect ---------------------------------------------------


def test_a_reload_after_creating_a_token_mints_nothing(acme: Persona) -> None:
    bob = client_for(acme.developer or "")
    where = create_token(bob, acme.slug, name="laptop")
    assert not PAT.search(where), "the token is never in a URL"
    # Waiting for the next page in the session's database row, it is sealed, never plain.
    stored = Session.objects.get(pk=bob.session.session_key)
    assert "portal_reveal" in stored.get_decoded()
    assert not PAT.search(stored.session_data) and not PAT.search(json.dumps(stored.get_decoded()))
    first = bob.get(where)
    assert first.status_code == 200
    assert "no-store" in first["Cache-Control"]
    pat = PAT.search(first.content.decode())
    assert pat
    assert pat.group(0) not in str(first.cookies) and pat.group(0) not in str(bob.session.items())
    assert not Session.objects.get(pk=bob.session.session_key).get_decoded().get("portal_reveal")

    again = bob.get(where)  # the reload
    assert again.status_code == 200
    assert not PAT.search(again.content.decode())
    assert "was shown once" in again.content.decode()
    assert AccessToken.objects.filter(tenant=acme.tenant, user__username=acme.developer).count() == 1


def test_a_token_left_waiting_too_long_is_not_shown_and_says_so(acme: Persona) -> None:
    bob = client_for(acme.developer or "")
    where = create_token(bob, acme.slug, name="forgotten")
    session = bob.session
    waiting = session["portal_reveal"]
    for entry in waiting.values():
        entry["until"] = 0  # as if the next page came after reveal.KEEP_SECONDS
    session["portal_reveal"] = waiting
    session.save()
    page = bob.get(where)
    assert page.status_code == 200
    assert not PAT.search(page.content.decode())
    assert "can no longer be shown" in page.content.decode()


def test_another_session_of_the_same_user_never_sees_the_new_token(acme: Persona) -> None:
    where = create_token(client_for(acme.developer or ""), acme.slug)
    other_browser = client_for(acme.developer or "")
    page = other_browser.get(where)
    assert page.status_code == 200
    assert not PAT.search(page.content.decode()) and "was shown once" in page.content.decode()


def test_a_duplicate_token_name_is_refused_naming_the_token_it_clashes_with(acme: Persona) -> None:
    bob = client_for(acme.developer or "")
    create_token(bob, acme.slug, name="laptop")
    first = AccessToken.objects.get(tenant=acme.tenant, name="laptop")
    response = bob.post(
        f"/t/{acme.slug}/tokens/",
        {"name": "Laptop ", "scopes": ["cas:read"], "expires_in_days": 30, "cluster": "external"},
    )
    assert response.status_code == 400
    assert "already has an active token named" in response.content.decode()
    assert first.prefix in response.content.decode()
    assert AccessToken.objects.filter(tenant=acme.tenant, name__iexact="laptop").count() == 1
    # Another owner may use the name, and so may bob once his is revoked.
    create_token(client_for(acme.admin), acme.slug, name="laptop")
    tokens.revoke(first)
    create_token(bob, acme.slug, name="laptop")
    assert AccessToken.objects.filter(tenant=acme.tenant, name="laptop").count() == 3


def test_the_command_line_warns_of_a_duplicate_name_and_issues_the_token(acme: Persona) -> None:
    args = ("token", "issue", "--tenant", acme.slug, "--user", acme.admin, "--name", "ci")
    manage(*args)
    second = manage(*args)
    assert "warning: another token has this name" in second.stderr
    assert PAT.fullmatch(second.stdout.strip().splitlines()[-1])
    assert AccessToken.objects.filter(tenant=acme.tenant, name="ci").count() == 2


# --- Scopes and snippets --------------------------------------------------------------------------


def test_every_way_of_making_a_token_starts_from_one_default_scope_set(acme: Persona) -> None:
    assert "execute" in DEFAULT_SCOPES
    form = forms.TokenForm(tenant=acme.tenant)
    assert list(form.fields["scopes"].initial) == list(DEFAULT_SCOPES)
    ci = forms.CiIdentityForm(members=[])
    assert list(ci.fields["scopes"].initial) == list(DEFAULT_SCOPES)
    issued = manage("token", "issue", "--tenant", acme.slug, "--user", acme.admin, "--name", "default")
    assert issued.returncode == 0
    assert AccessToken.objects.get(tenant=acme.tenant, name="default").scope_list == list(DEFAULT_SCOPES)
    page = client_for(acme.admin).get(f"/t/{acme.slug}/tokens/").content.decode()
    for scope in DEFAULT_SCOPES:
        box = re.search(rf'<input type="checkbox" name="scopes" value="{scope}"[^>]*>', page)
        assert box and "checked" in box.group(0), scope


def test_the_created_page_offers_execution_lines_only_to_a_token_with_execute(acme: Persona) -> None:
    alice = client_for(acme.admin)
    full = alice.get(create_token(alice, acme.slug, name="full")).content.decode()
    assert "build --remote_cache=" in full and "build --remote_executor=" in full
    assert 'id="no-execute"' not in full

    cache_only = ["cas:read", "ac:read", "cas:write", "ac:write"]
    page = alice.get(create_token(alice, acme.slug, name="cache", scopes=cache_only)).content.decode()
    assert "build --remote_cache=" in page and "build --remote_executor=" not in page
    assert 'id="no-execute"' in page and "not authorized" in page


def test_the_builder_warns_when_none_of_your_tokens_has_execute(acme: Persona) -> None:
    bob = client_for(acme.developer or "")
    tokens.issue(acme.tenant, acme.developer or "", name="reader", scopes="cas:read,ac:read")
    query = "cluster=external&execution=1&download=all&timeout=60"
    page = bob.get(f"/t/{acme.slug}/bazelrc/?{query}").content.decode()
    assert 'id="execute-warning"' in page and "None of your active tokens has it" in page
    tokens.issue(acme.tenant, acme.developer or "", name="runner")
    page = bob.get(f"/t/{acme.slug}/bazelrc/?{query}").content.decode()
    assert "Yours with <code>execute</code>" in page and "runner" in page
    cache = bob.get(f"/t/{acme.slug}/bazelrc/?cluster=external&execution=0&download=all&timeout=60")
    assert 'id="execute-warning"' not in cache.content.decode()


def test_the_builder_shows_no_lines_under_a_form_with_an_error(acme: Persona) -> None:
    response = client_for(acme.developer or "").get(
        f"/t/{acme.slug}/bazelrc/?cluster=external&execution=0&download=all&timeout=99999"
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert "less than or equal to 3600" in body
    assert "build --remote" not in body and "data-copy" not in body
    assert 'id="no-snippet"' in body


# --- Owners, superusers -----------------------------------------------------------------------------


def test_an_admin_issues_a_token_for_a_member(acme: Persona) -> None:
    alice = client_for(acme.admin)
    bob_id = get_user_model().objects.get(username=acme.developer).pk
    page = alice.get(f"/t/{acme.slug}/tokens/").content.decode()
    assert 'name="owner"' in page and (acme.developer or "?") in page
    where = create_token(alice, acme.slug, name="for-bob", owner=bob_id)
    shown = alice.get(where).content.decode()
    assert PAT.search(shown) and "hand it to them" in shown
    token = AccessToken.objects.get(tenant=acme.tenant, name="for-bob")
    assert token.user_id == bob_id
    event = AuditEvent.objects.get(tenant=acme.tenant, action="token.issue", token_prefix=token.prefix)
    assert event.actor is not None and event.actor.get_username() == acme.admin
    assert event.detail["owner"] == acme.developer


def test_a_developer_cannot_make_a_token_for_someone_else(acme: Persona) -> None:
    bob = client_for(acme.developer or "")
    assert 'name="owner"' not in bob.get(f"/t/{acme.slug}/tokens/").content.decode()
    alice_id = get_user_model().objects.get(username=acme.admin).pk
    create_token(bob, acme.slug, name="mine", owner=alice_id)
    assert AccessToken.objects.get(tenant=acme.tenant, name="mine").user.get_username() == acme.developer


def test_a_superuser_outside_a_tenant_chooses_an_owner_or_joins_first() -> None:
    root = get_user_model().objects.create_superuser(f"root-{uuid.uuid4().hex[:6]}", password="x" * 12)
    empty = tenancy.create_tenant(f"cli-made-{uuid.uuid4().hex[:6]}")  # as `tenant create` makes it
    client = Client()
    client.force_login(root)
    page = client.get(f"/t/{empty.slug}/tokens/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "Join" in body and 'name="name"' not in body, "no form: a token needs a member to hold it"
    refused = client.post(
        f"/t/{empty.slug}/tokens/",
        {"name": "x", "scopes": ["cas:read"], "expires_in_days": 30, "cluster": "external"},
    )
    assert refused.status_code == 400 and "is not a member" not in refused.content.decode()
    assert not AccessToken.objects.filter(tenant=empty).exists()

    joined = client.post(f"/t/{empty.slug}/join/", {"next": "tokens"})
    assert joined.status_code == 302 and joined["Location"] == f"/t/{empty.slug}/tokens/"
    assert Membership.objects.get(tenant=empty, user=root).role == "admin"
    assert AuditEvent.objects.filter(tenant=empty, action="member.add", actor=root).exists()
    create_token(client, empty.slug, name="root-laptop")
    assert AccessToken.objects.get(tenant=empty, name="root-laptop").user == root


# --- Local accounts ---------------------------------------------------------------------------------


def test_an_admin_makes_a_local_account_whose_owner_sets_the_password(acme: Persona) -> None:
    alice = client_for(acme.admin)
    name = f"dora-{uuid.uuid4().hex[:6]}"
    Invitation.objects.create(tenant=acme.tenant, email=f"{name}@example.com", role="admin")
    response = alice.post(
        f"/t/{acme.slug}/members/accounts/",
        {"account-username": name, "account-email": f"{name}@Example.com", "account-role": "developer"},
    )
    assert response.status_code == 303
    user = get_user_model().objects.get(username=name)
    assert user.email == f"{name}@example.com" and not user.has_usable_password()
    assert Membership.objects.get(tenant=acme.tenant, user=user).role == "developer"
    assert LocalAccount.objects.get(user=user).tenant == acme.tenant
    assert not Invitation.objects.filter(
        tenant=acme.tenant, accepted_at__isnull=True, email__iexact=user.email
    )

    shown = alice.get(response["Location"])
    assert shown.status_code == 200 and "no-store" in shown["Cache-Control"]
    link = re.search(
        r'id="set-password-link">(http://testserver/set-password/[^<]+)<', shown.content.decode()
    )
    assert link, "the set-password link is on the page"
    again = alice.get(response["Location"]).content.decode()
    assert link.group(1) not in again and "shown once" in again

    visitor = Client()
    form = visitor.get(link.group(1), follow=True)
    assert form.status_code == 200 and 'name="new_password1"' in form.content.decode()
    done = visitor.post(
        form.redirect_chain[-1][0],
        {"new_password1": "a long enough passphrase", "new_password2": "a long enough passphrase"},
    )
    assert done.status_code == 302 and done["Location"] == "/set-password/done/"
    assert (
        visitor.post("/login/", {"username": name, "password": "a long enough passphrase"}).status_code == 302
    )
    assert "does not work any more" in Client().get(link.group(1), follow=True).content.decode()


def test_a_bad_local_account_is_refused_naming_the_field(acme: Persona) -> None:
    alice = client_for(acme.admin)
    for fields, message in (
        ({"account-username": acme.developer, "account-email": "new@example.com"}, "is taken"),
        ({"account-username": "new one", "account-email": "new@example.com"}, "only letters, digits"),
        ({"account-username": "newbie", "account-email": "not-an-email"}, "valid email"),
    ):
        response = alice.post(f"/t/{acme.slug}/members/accounts/", {**fields, "account-role": "developer"})
        assert response.status_code == 400, fields
        assert message in response.content.decode(), fields
    assert not get_user_model().objects.filter(username__in=["new one", "newbie"]).exists()
    bob = client_for(acme.developer or "")
    assert (
        bob.post(
            f"/t/{acme.slug}/members/accounts/",
            {"account-username": "sneaky", "account-email": "s@example.com", "account-role": "admin"},
        ).status_code
        == 403
    )
    assert not get_user_model().objects.filter(username="sneaky").exists()


def test_an_account_an_admin_made_collects_no_other_tenants_invitation(
    acme: Persona, globex: Persona
) -> None:
    target = f"boss-{uuid.uuid4().hex[:6]}@globex.test"
    # acme's admin makes an account with an address globex will invite.
    alice = client_for(acme.admin)
    name = f"mallory-{uuid.uuid4().hex[:6]}"
    made = alice.post(
        f"/t/{acme.slug}/members/accounts/",
        {"account-username": name, "account-email": target, "account-role": "developer"},
    )
    assert made.status_code == 303
    invitations.invite(globex.tenant, target, "admin")
    user = get_user_model().objects.get(username=name)
    user.set_password("mallory-password-1")
    user.save()
    assert Client().post("/login/", {"username": name, "password": "mallory-password-1"}).status_code == 302
    assert not Membership.objects.filter(tenant=globex.tenant, user=user).exists()
    assert Invitation.objects.get(tenant=globex.tenant, email=target).accepted_at is None


def test_the_command_line_says_how_a_user_it_created_can_sign_in(acme: Persona) -> None:
    name = f"erin-{uuid.uuid4().hex[:6]}"
    made = manage("tenant", "add-member", acme.slug, name)
    assert f"{name} is developer of {acme.slug}" in made.stdout
    assert "cannot sign in" in made.stderr and f"manage.py changepassword {name}" in made.stderr
    again = manage("tenant", "add-member", acme.slug, name, "--role", "admin")
    assert "cannot sign in" not in again.stderr  # an existing user: nothing to say


# --- Asked first -------------------------------------------------------------------------------------


def test_revoke_is_asked_on_the_tokens_page_and_a_second_revoke_changes_nothing(acme: Persona) -> None:
    token = tokens.issue(acme.tenant, acme.developer or "", name="laptop").token
    bob = client_for(acme.developer or "")
    listing = bob.get(f"/t/{acme.slug}/tokens/").content.decode()
    assert f'action="/t/{acme.slug}/tokens/{token.id}/revoke/"' not in listing, "no one-click revoke"
    ask = bob.get(f"/t/{acme.slug}/tokens/{token.id}/")
    assert ask.status_code == 200
    assert "cannot be undone" in ask.content.decode() and "refused within" in ask.content.decode()
    assert AccessToken.objects.get(pk=token.pk).revoked_at is None

    assert bob.post(f"/t/{acme.slug}/tokens/{token.id}/revoke/").status_code == 302
    revoked_at = AccessToken.objects.get(pk=token.pk).revoked_at
    assert revoked_at is not None
    twice = bob.post(f"/t/{acme.slug}/tokens/{token.id}/revoke/", follow=True)
    assert twice.status_code == 200 and "already revoked" in twice.content.decode()
    assert AccessToken.objects.get(pk=token.pk).revoked_at == revoked_at
    assert AuditEvent.objects.filter(action="token.revoke", token_prefix=token.prefix).count() == 1
    assert "already revoked" in bob.get(f"/t/{acme.slug}/tokens/{token.id}/").content.decode()


def test_removing_a_member_is_asked_first_naming_what_it_revokes(acme: Persona) -> None:
    laptop = tokens.issue(acme.tenant, acme.developer or "", name="bob-laptop").token
    bob = Membership.objects.get(tenant=acme.tenant, user__username=acme.developer)
    alice = client_for(acme.admin)
    listing = alice.get(f"/t/{acme.slug}/members/").content.decode()
    assert f'action="/t/{acme.slug}/members/{bob.id}/remove/"' not in listing, "no one-click remove"
    ask = alice.get(f"/t/{acme.slug}/members/{bob.id}/")
    assert ask.status_code == 200
    body = ask.content.decode()
    assert "1 token here is revoked" in body and laptop.prefix in body and "bob-laptop" in body
    assert Membership.objects.filter(pk=bob.pk).exists()
    assert client_for(acme.developer or "").get(f"/t/{acme.slug}/members/{bob.id}/").status_code == 403


def test_inviting_the_same_address_twice_is_logged_once(acme: Persona) -> None:
    alice = client_for(acme.admin)
    for _ in range(2):
        response = alice.post(
            f"/t/{acme.slug}/members/invite/", {"email": "dan@example.com", "role": "developer"}, follow=True
        )
        assert response.status_code == 200
    assert "already invited" in response.content.decode()
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="member.invite").count() == 1
    alice.post(f"/t/{acme.slug}/members/invite/", {"email": "dan@example.com", "role": "admin"})
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="member.invite").count() == 2
    assert Invitation.objects.get(tenant=acme.tenant, email="dan@example.com").role == "admin"


# --- Error pages ---------------------------------------------------------------------------------------


def assert_portal_page(body: str) -> None:
    assert "<header>" in body and 'href="/"' in body, "the portal's navigation"
    # The stylesheet, named by its content's hash (WhiteNoise's manifest).
    assert re.search(r"/static/portal/portal\.[0-9a-f]{12}\.css", body), "the portal's stylesheet"
    for leak in ("Traceback", "URLconf", "DEBUG", "urlpatterns", "Django"):
        assert leak not in body, leak


def test_a_non_member_gets_a_portal_404_that_says_why(acme: Persona, globex: Persona) -> None:
    response = client_for(globex.admin).get(f"/t/{acme.slug}/members/")
    assert response.status_code == 404
    body = response.content.decode()
    assert_portal_page(body)
    assert "not a member of" in body and acme.slug not in body


def test_a_developer_gets_a_portal_403_with_the_tenants_navigation(acme: Persona) -> None:
    response = client_for(acme.developer or "").get(f"/t/{acme.slug}/audit/")
    assert response.status_code == 403
    body = response.content.decode()
    assert_portal_page(body)
    assert 'aria-label="Tenant"' in body and f'href="/t/{acme.slug}/tokens/"' in body
    assert "for the admins of" in body and "you are a developer" in body


def test_a_server_error_is_a_portal_page_without_the_errors_text() -> None:
    from portal import error_views, urls

    assert urls.handler500 == "portal.error_views.server_error"
    response = error_views.server_error(RequestFactory().get("/"))
    assert response.status_code == 500
    body = response.content.decode()
    assert_portal_page(body)
    assert "could not finish this request" in body


# --- Slugs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["a_b", "-ab", "ab-", "Ab", "a" * 64, "a.b"])
def test_a_slug_against_the_rule_is_refused_in_the_same_words_everywhere(slug: str) -> None:
    root = get_user_model().objects.create_superuser(f"root-{uuid.uuid4().hex[:6]}", password="x" * 12)
    client = Client()
    client.force_login(root)
    page = client.post("/", {"slug": slug})
    assert page.status_code == 200
    cli = manage("tenant", "create", "--", slug, check=False)  # "--": "-ab" is no option
    assert cli.returncode != 0
    message = f"{slug!r} is not a valid slug: {tenancy.SLUG_RULE}"
    assert message in cli.stderr
    assert message in page.content.decode().replace("&#x27;", "'")
    assert not Membership.objects.filter(tenant__slug=slug).exists()


def test_a_slug_of_63_characters_is_accepted() -> None:
    slug = ("b" + uuid.uuid4().hex * 2)[:63]
    assert tenancy.create_tenant(slug).slug == slug
