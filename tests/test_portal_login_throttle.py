"""Password sign-in throttling (portal/login_throttle.py): per account and per client address,
through Django's test client, and across two real portal processes sharing Redis."""

import re
import time
import uuid

import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.test import Client, override_settings

from portal.models import AuditEvent
from tests.support.oidc import PortalServer
from tests.support.servers import manage
from tests.support.tenants import Persona

PASSWORD = "the-right-password-42"


def account() -> User:
    return get_user_model().objects.create_user(f"lock-{uuid.uuid4().hex[:8]}", password=PASSWORD)


def address(n: int = 0) -> str:
    """A private address no other test uses: a random /24 of 10.0.0.0/8, host `n`."""
    block = uuid.uuid4().int % 65536
    return f"10.{block // 256}.{block % 256}.{n % 250 + 1}"


def sign_in(client: Client, username: str, password: str, remote: str, **headers: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/login/", {"username": username, "password": password}, REMOTE_ADDR=remote, headers=headers
    )


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_it_refuses_the_right_password_after_forty_wrong_ones() -> None:
    user = account()
    client = Client()
    statuses = [sign_in(client, user.username, f"guess-{i}", address(i)).status_code for i in range(40)]
    assert statuses[:4] == [200] * 4  # wrong password, the form again
    assert set(statuses[4:]) == {429}
    response = sign_in(client, user.username, PASSWORD, address(99))
    assert response.status_code == 429
    assert not signed_in(client)
    body = response.content.decode()
    assert re.search(r"Too many failed sign-ins for this account\. Try again after \d\d:\d\d UTC", body)
    assert 0 < int(response["Retry-After"]) <= 900
    lockouts = AuditEvent.objects.filter(action="login.lockout", actor=user)
    assert lockouts.count() == 1  # audited once, not per refused attempt
    assert lockouts.get().detail["kind"] == "account" and lockouts.get().detail["username"] == user.username


def test_it_locks_an_address_that_tries_many_accounts() -> None:
    user = account()
    remote = address()
    client = Client()
    for i in range(20):
        sign_in(client, f"nobody-{uuid.uuid4().hex[:8]}-{i}", "guess", remote)
    refused = sign_in(client, user.username, PASSWORD, remote)
    assert refused.status_code == 429 and "from your address" in refused.content.decode()
    assert not signed_in(client)
    event = AuditEvent.objects.get(action="login.lockout", detail__address=remote)
    assert event.detail["kind"] == "address" and event.detail["username"] == ""  # no such account
    elsewhere = Client()
    assert sign_in(elsewhere, user.username, PASSWORD, address(7)).status_code == 302
    assert signed_in(elsewhere)


def test_a_success_clears_the_accounts_failures() -> None:
    user = account()
    remote = address()
    client = Client()
    for _ in range(4):
        assert sign_in(client, user.username, "wrong", remote).status_code == 200
    assert sign_in(client, user.username, PASSWORD, remote).status_code == 302
    client = Client()
    for _ in range(4):
        assert sign_in(client, user.username, "wrong", remote).status_code == 200
    assert sign_in(client, user.username, PASSWORD, remote).status_code == 302
    assert not AuditEvent.objects.filter(action="login.lockout", actor=user).exists()


def test_a_forged_forwarded_for_does_not_rotate_the_address_by_default() -> None:
    remote = address()
    client = Client()
    for i in range(20):
        sign_in(client, f"nobody-{i}", "guess", remote, x_forwarded_for=f"203.0.113.{i}")
    response = sign_in(client, "nobody-else", "guess", remote, x_forwarded_for="203.0.113.200")
    assert response.status_code == 429 and "from your address" in response.content.decode()


@override_settings(PORTAL_CLIENT_IP_META="HTTP_X_FORWARDED_FOR")
def test_behind_a_proxy_it_counts_the_address_the_proxy_appended() -> None:
    proxy = address()
    client_a, client_b = address(1), address(2)
    client = Client()
    # What the client put before the proxy's entry is its own choice and changes nothing.
    for i in range(20):
        sign_in(client, f"nobody-{i}", "guess", proxy, x_forwarded_for=f"10.0.0.{i}, {client_a}")
    assert sign_in(client, "x", "guess", proxy, x_forwarded_for=f"10.9.9.9, {client_a}").status_code == 429
    assert sign_in(client, "x", "guess", proxy, x_forwarded_for=client_b).status_code == 200


def test_ipv6_addresses_count_per_slash_64() -> None:
    prefix = f"2001:db8:{uuid.uuid4().int % 0xFFFF:x}:1"
    client = Client()
    for i in range(20):
        sign_in(client, f"nobody-{i}", "guess", f"{prefix}::{i + 1:x}")
    assert sign_in(client, "x", "guess", f"{prefix}::ffff").status_code == 429
    assert sign_in(client, "x", "guess", f"2001:db8:{uuid.uuid4().int % 0xFFFF:x}:2::1").status_code == 200


def test_the_admin_site_login_is_throttled_too() -> None:
    user = get_user_model().objects.create_superuser(f"root-{uuid.uuid4().hex[:8]}", password=PASSWORD)
    client = Client()
    for i in range(5):
        client.post("/admin/login/", {"username": user.username, "password": "guess"}, REMOTE_ADDR=address(i))
    response = client.post(
        "/admin/login/", {"username": user.username, "password": PASSWORD}, REMOTE_ADDR=address(9)
    )
    assert "Too many failed sign-ins for this account" in response.content.decode()
    assert not signed_in(client)


def test_a_lockout_ends() -> None:
    user = account()
    client = Client()
    for i in range(4):
        assert sign_in(client, user.username, "guess", address(i)).status_code == 200
    with override_settings(LOGIN_LOCKOUT_SECONDS=1):
        # The fifth failure starts a lockout, of one second here.
        assert sign_in(client, user.username, "guess", address(4)).status_code == 429
    time.sleep(1.5)
    assert sign_in(client, user.username, PASSWORD, address(8)).status_code == 302
    assert signed_in(client)


def test_a_members_lockout_is_in_the_tenants_audit_log(acme: Persona) -> None:
    client = Client()
    for i in range(5):
        sign_in(client, acme.developer or "", "guess", address(i))
    admin = Client()
    admin.force_login(get_user_model().objects.get(username=acme.admin))
    page = admin.get(f"/t/{acme.slug}/audit/").content.decode()
    # The audit log in words: the event and whose sign-ins were locked.
    assert "login.lockout" in page
    assert f"sign-ins for account {acme.developer} locked until" in page


def login_once(portal: PortalServer, username: str, password: str, remote: str) -> requests.Response:
    session = requests.Session()
    page = session.get(f"{portal.url}/login/", timeout=10)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert csrf
    return session.post(
        f"{portal.url}/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": csrf.group(1)},
        headers={"Referer": f"{portal.url}/login/", "X-Real-IP": remote},
        allow_redirects=False,
        timeout=10,
    )


def test_two_portal_processes_share_the_counts_through_redis() -> None:
    user = account()
    env = {"PORTAL_CACHE_URL": "redis://127.0.0.1:6379/13", "PORTAL_CLIENT_IP_HEADER": "X-Real-IP"}
    with PortalServer(env) as first, PortalServer(env) as second:
        for i in range(5):
            reply = login_once((first, second)[i % 2], user.username, "guess", address(i))
            assert reply.status_code == (429 if i == 4 else 200), i
        for portal in (first, second):
            refused = login_once(portal, user.username, PASSWORD, address(9))
            assert refused.status_code == 429 and "Try again after" in refused.text
        # The header names the client: another address is not locked out.
        fine = login_once(first, f"nobody-{uuid.uuid4().hex[:8]}", "guess", address(10))
        assert fine.status_code == 200
    assert AuditEvent.objects.filter(action="login.lockout", actor=user).count() == 1


def test_malformed_throttle_settings_stop_start_up() -> None:
    for env, named in (
        (
            {"PORTAL_CLIENT_IP_HEADER": "X-Forwarded-For: 1.2.3.4"},
            "PORTAL_CLIENT_IP_HEADER must be a header name",
        ),
        ({"PORTAL_CACHE_URL": "memcached://user:hunter2@cache:11211"}, "PORTAL_CACHE_URL must be"),
        ({"LOGIN_MAX_FAILURES_PER_ACCOUNT": "0"}, "LOGIN_MAX_FAILURES_PER_ACCOUNT must be at least 1"),
    ):
        result = manage("check", env=env, check=False)
        assert result.returncode != 0 and named in result.stderr, env
        assert "hunter2" not in result.stderr
