"""What every portal response tells the browser: a Content-Security-Policy the pages satisfy
(no inline script or style), nosniff, same-origin referrers, no framing; and no debug pages
unless DJANGO_DEBUG=1 asks for them."""

import re

from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.test import Client

from portal.csp import POLICY
from tests.support.servers import manage
from tests.support.tenants import Persona

PAGES = ("", "tokens/", "bazelrc/", "members/", "usage/", "invocations/", "cache-mode/", "ci/", "audit/")


def admin_client(acme: Persona) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.get(username=acme.admin))
    return client


def test_every_response_carries_the_security_headers(acme: Persona) -> None:
    alice = admin_client(acme)
    responses = {
        "/login/": Client().get("/login/"),
        "/no-such-page/": Client().get("/no-such-page/"),
        "/api/v1/tenants/": alice.get("/api/v1/tenants/"),
        "/workers/": alice.get("/workers/"),
        **{f"/t/{acme.slug}/{p}": alice.get(f"/t/{acme.slug}/{p}") for p in PAGES},
    }
    for url, response in responses.items():
        assert response.status_code in (200, 404), url
        csp = response["Content-Security-Policy"]
        assert csp == POLICY, url
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert response["X-Content-Type-Options"] == "nosniff", url
        assert response["Referrer-Policy"] == "same-origin", url
        assert response["X-Frame-Options"] == "DENY", url


def test_the_pages_have_no_inline_script_or_style(acme: Persona) -> None:
    alice = admin_client(acme)
    issued = alice.post(
        f"/t/{acme.slug}/tokens/",
        {"name": "laptop", "scopes": ["cas:read"], "expires_in_days": 30, "cluster": "external"},
        follow=True,
    )
    bodies = {
        "login": Client().get("/login/"),
        "token created": issued,
        "workers": alice.get("/workers/"),
        **{p: alice.get(f"/t/{acme.slug}/{p}") for p in PAGES},
    }
    for name, response in bodies.items():
        assert response.status_code == 200, name
        html = response.content.decode()
        # The stylesheet by its content-hashed name (WhiteNoise's manifest).
        assert re.search(r'<link rel="stylesheet" href="/static/portal/portal\.[0-9a-f]{12}\.css">', html), (
            name
        )
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), f"{name}: inline <script>"
        assert "<style" not in html, f"{name}: <style> element"
        assert not re.search(r"\sstyle=", html), f"{name}: style attribute"
        assert not re.search(r"\son[a-z]+=", html), f"{name}: inline event handler"


def test_static_files_are_found() -> None:
    for path in ("portal/portal.css", "portal/portal.js", "workers/fleet.css"):
        assert finders.find(path), path


def test_a_missing_page_shows_no_debug_page_by_default() -> None:
    response = Client().get("/no-such-page/")
    assert response.status_code == 404
    body = response.content.decode()
    assert "URLconf" not in body and "api/v1/" not in body and "DEBUG" not in body


def test_debug_is_on_only_when_django_debug_asks() -> None:
    assert "DEBUG = True" not in manage("diffsettings").stdout
    assert "DEBUG = True" in manage("diffsettings", env={"DJANGO_DEBUG": "1"}).stdout
    both = manage(
        "check",
        env={
            "DJANGO_DEBUG": "1",
            "DJANGO_PRODUCTION": "1",
            "DJANGO_SECRET_KEY": "x" * 60,
            "DJANGO_ALLOWED_HOSTS": "cache.example.com",
        },
        check=False,
    )
    assert both.returncode != 0 and "DJANGO_DEBUG=1 and DJANGO_PRODUCTION=1 exclude each other" in both.stderr
