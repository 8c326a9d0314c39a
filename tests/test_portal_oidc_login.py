"""Portal login through a real OpenID provider (oidc-provider, tests/oidc-provider/, on localhost).

The portal side runs in this process (Django's test client) so each failure mode can be set up;
every call from the portal to the provider (token, UserInfo, JWKS) is real HTTP.
"""

import html
import re
from collections.abc import Iterator
from urllib.parse import urljoin

import jwt
import pytest
import requests
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from portal.models import AuditEvent, Invitation, Membership, OidcIdentity
from tests.support.oidc import CLIENT_ID, OidcProvider
from tests.support.servers import free_port
from tests.support.tenants import Persona

USERS = [
    {
        "username": "alice",
        "password": "alice-pw",
        "sub": "sub-alice-1",
        "email": "alice@acme.test",
        "email_verified": True,
        "name": "Alice Admin",
    },
    {
        "username": "mallory",
        "password": "mallory-pw",
        "sub": "sub-mallory-1",
        "email": "alice@acme.test",
        "email_verified": False,
    },
]


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with OidcProvider(USERS, redirect_uris=["http://testserver/oidc/callback/"]) as p:
        yield p


@pytest.fixture
def oidc(provider: OidcProvider) -> Iterator[OidcProvider]:
    with override_settings(
        OIDC_ENABLED=True,
        AUTHENTICATION_BACKENDS=["portal.oidc.Backend"],
        **provider.portal_env(),
    ):
        yield provider


def start_login(client: Client, provider: OidcProvider, username: str, password: str) -> str:
    """Follow the portal to the provider, sign in there, and return the callback URL it sends back."""
    start = client.get("/oidc/authenticate/")
    assert start.status_code == 302
    location = start["Location"]
    assert location.startswith(f"{provider.authorization_endpoint}?")
    assert "code_challenge_method=S256" in location and "nonce=" in location and "state=" in location
    # One browser at the provider: it ties the sign-in to its own cookies.
    browser = requests.Session()
    form = browser.get(location, timeout=5)  # redirected to the provider's login page
    assert form.status_code == 200 and 'name="password"' in form.text
    action = re.search(r'<form method="post" action="([^"]+)"', form.text)
    assert action, form.text
    reply = browser.post(
        urljoin(form.url, html.unescape(action[1])),
        data={"username": username, "password": password},
        allow_redirects=False,
        timeout=5,
    )
    # The provider resumes the authorization request through redirects of its own, then
    # sends the browser back to the portal.
    while reply.is_redirect and not reply.headers["Location"].startswith("http://testserver/"):
        reply = browser.get(urljoin(reply.url, reply.headers["Location"]), allow_redirects=False, timeout=5)
    assert reply.is_redirect, reply.text
    callback = reply.headers["Location"]
    assert callback.startswith("http://testserver/oidc/callback/?")
    return callback.removeprefix("http://testserver")


def test_it_binds_the_user_on_iss_and_sub_not_on_email(oidc: OidcProvider, acme: Persona) -> None:
    # Someone already has the same email locally: the OIDC login must not take that account over.
    squatter = get_user_model().objects.create_user("local-squatter", email="alice@acme.test")
    Invitation.objects.create(tenant=acme.tenant, email="alice@acme.test", role="admin")
    client = Client()
    response = client.get(start_login(client, oidc, "alice", "alice-pw"))
    assert response.status_code == 302, response.content
    identity = OidcIdentity.objects.get(issuer=oidc.issuer, subject="sub-alice-1")
    assert identity.user != squatter
    assert Membership.objects.get(tenant=acme.tenant, user=identity.user).role == "admin"
    assert AuditEvent.objects.filter(action="login", actor=identity.user, detail__method="oidc").exists()
    assert client.get(f"/t/{acme.slug}/").status_code == 200

    again = Client()
    assert again.get(start_login(again, oidc, "alice", "alice-pw")).status_code == 302
    assert OidcIdentity.objects.filter(issuer=oidc.issuer, subject="sub-alice-1").count() == 1


def test_it_refuses_an_unverified_email(oidc: OidcProvider, acme: Persona) -> None:
    Invitation.objects.create(tenant=acme.tenant, email="alice@acme.test", role="admin")
    client = Client()
    response = client.get(start_login(client, oidc, "mallory", "mallory-pw"))
    assert response.status_code == 403
    assert "not verified" in response.content.decode()
    assert not OidcIdentity.objects.filter(subject="sub-mallory-1").exists()
    assert client.get("/").status_code == 302  # still signed out


def test_a_replayed_callback_gives_a_clear_page(oidc: OidcProvider) -> None:
    client = Client()
    callback = start_login(client, oidc, "alice", "alice-pw")
    assert client.get(callback).status_code == 302
    client.logout()
    stale = client.get(callback)  # the back button: state already used
    assert stale.status_code == 400
    assert "expired or was already used" in stale.content.decode()


def test_a_callback_from_another_browser_gives_a_clear_page(oidc: OidcProvider) -> None:
    callback = start_login(Client(), oidc, "alice", "alice-pw")
    stranger = Client().get(callback)
    assert stranger.status_code == 400
    assert "Please start again" in stranger.content.decode()


def test_a_provider_that_is_down_gives_a_clear_page(oidc: OidcProvider) -> None:
    client = Client()
    callback = start_login(client, oidc, "alice", "alice-pw")
    with override_settings(OIDC_OP_TOKEN_ENDPOINT=f"http://127.0.0.1:{free_port()}/token"):
        response = client.get(callback)
    assert response.status_code == 502
    assert "cannot be reached" in response.content.decode()


def test_a_provider_error_is_shown(oidc: OidcProvider) -> None:
    response = Client().get("/oidc/callback/?error=access_denied&error_description=user+cancelled&state=x")
    assert response.status_code == 400
    assert "user cancelled" in response.content.decode()


def test_local_password_login_is_off_with_a_provider(oidc: OidcProvider) -> None:
    get_user_model().objects.create_user("local-frank", password="frank-password-1")
    client = Client()
    page = client.get("/login/").content.decode()
    assert "Sign in with Test provider" in page and 'name="password"' not in page
    assert (
        client.post("/login/", {"username": "local-frank", "password": "frank-password-1"}).status_code == 405
    )
    assert client.get("/").status_code == 302
    assert client.get("/admin/login/")["Location"].startswith("/oidc/authenticate/")


def test_the_oidc_routes_are_absent_without_a_provider() -> None:
    assert Client().get("/oidc/authenticate/").status_code == 404


@pytest.mark.parametrize(
    ("claims", "alg", "reason"),
    [
        ({"aud": "someone-else"}, "RS256", "audience"),
        ({"iss": "http://evil.test"}, "RS256", "issuer"),
        ({"exp": 1000}, "RS256", "expired"),
        ({"exp": None}, "RS256", "exp"),
    ],
)
def test_the_id_token_is_checked_strictly(oidc: OidcProvider, claims: dict, alg: str, reason: str) -> None:
    from django.core.exceptions import SuspiciousOperation

    from portal.oidc import Backend

    token = oidc.sign({"sub": "x", "aud": CLIENT_ID, **claims}, alg=alg)
    key = jwt.PyJWK(jwt.algorithms.RSAAlgorithm.to_jwk(oidc.private_key().public_key(), as_dict=True))
    with pytest.raises(SuspiciousOperation, match=f"(?i){reason}"):
        Backend()._verify_jws(token, key)


def test_an_hs256_id_token_is_refused(oidc: OidcProvider) -> None:
    from django.core.exceptions import SuspiciousOperation

    from portal.oidc import Backend

    token = jwt.encode(
        {"sub": "x", "aud": CLIENT_ID, "iss": oidc.issuer, "exp": 9999999999, "iat": 1},
        "secret-key-of-32-bytes-or-more!!",
        algorithm="HS256",
    )
    with pytest.raises(SuspiciousOperation, match="not RS256"):
        Backend()._verify_jws(token, "secret-key-of-32-bytes-or-more!!")


def test_a_callback_naming_another_issuer_is_refused_before_its_code_is_redeemed(oidc: OidcProvider) -> None:
    # RFC 9207: the provider names itself (iss) in its authorization response.
    client = Client()
    callback = start_login(client, oidc, "alice", "alice-pw")
    assert f"iss={requests.utils.quote(oidc.issuer, safe='')}" in callback
    forged = re.sub(r"iss=[^&]+", "iss=" + requests.utils.quote("https://evil.example", safe=""), callback)
    refused = client.get(forged)
    assert refused.status_code == 400
    assert "another provider" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    # The genuine response, still unredeemed, signs in.
    assert client.get(callback).status_code == 302
    assert "_auth_user_id" in client.session
