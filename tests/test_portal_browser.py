"""The whole admin flow in Debian's Chromium, driven by Playwright, against real processes: the
test OpenID provider, the portal (`manage.py runserver`) and a REAPI server. A screenshot of
every page goes to tests/artifacts/portal-*.png. No page may break its Content-Security-Policy:
every `securitypolicyviolation` event and every console message about the policy fails the test."""

import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Response,
    expect,
    sync_playwright,
)

from portal import tenancy
from portal.models import AccessToken, Invitation, Tenant
from tests.oidc import OidcProvider, PortalServer
from tests.reapi_client import Client
from tests.servers import ReapiServer
from tests.usage_traffic import EXPECTED, traffic, usage_of

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USERS = [
    {
        "username": "ada",
        "password": "ada-password",
        "sub": "sub-ada-42",
        "email": "ada@browser.test",
        "email_verified": True,
        "name": "Ada Admin",
    }
]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[OidcProvider, PortalServer]]:
    portal = PortalServer()
    with OidcProvider(USERS, redirect_uris=[f"{portal.url}/oidc/callback/"]) as provider:
        portal.env.update(provider.portal_env())
        with portal:
            yield provider, portal


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


class CspWatch:
    """What a browser context reports against the portal's Content-Security-Policy: the pages'
    `securitypolicyviolation` events, Chromium's console messages about the policy, and any
    portal page served without the policy at all (which could then break nothing)."""

    REPORT = """document.addEventListener("securitypolicyviolation", function (e) {
        window.reportCspViolation(e.violatedDirective + " blocked " + (e.blockedURI || "inline")
            + " in " + e.documentURI + " line " + e.lineNumber);
    });"""

    def __init__(self, portal_url: str) -> None:
        self.portal_url = portal_url
        self.events: list[str] = []
        self.console: list[str] = []
        self.without_policy: list[str] = []
        self.documents = 0

    def attach(self, context: BrowserContext) -> None:
        context.expose_binding("reportCspViolation", lambda _source, text: self.events.append(text))
        context.add_init_script(self.REPORT)
        context.on("console", self._console)
        context.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.console.append(f"{message.type}: {message.text}")

    def _response(self, response: Response) -> None:
        if response.request.resource_type == "document" and response.url.startswith(self.portal_url):
            self.documents += 1
            if "frame-ancestors 'none'" not in response.headers.get("content-security-policy", ""):
                self.without_policy.append(response.url)

    def assert_clean(self, where: str) -> None:
        assert not self.events, f"{where}: CSP violations {self.events}"
        assert not self.console, f"{where}: CSP console messages {self.console}"
        assert not self.without_policy, f"{where}: pages without the policy {self.without_policy}"

    def clear(self) -> None:
        self.events.clear()
        self.console.clear()


def shoot(page: Page, artifacts: Path, name: str, csp: CspWatch) -> None:
    page.screenshot(path=str(artifacts / f"portal-{name}.png"), full_page=True)
    csp.assert_clean(name)


def no_horizontal_scroll(page: Page) -> bool:
    doc = "document.documentElement"
    return bool(page.evaluate(f"{doc}.scrollWidth <= {doc}.clientWidth"))


def test_an_admin_does_everything_in_the_browser(
    stack: tuple[OidcProvider, PortalServer],
    browser: Browser,
    external_server: ReapiServer,
    artifacts: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Playwright's sync API keeps an event loop on this thread; the ORM calls below are plain
    # blocking calls made between browser steps.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    provider, portal = stack
    tenant = tenancy.create_tenant(f"browser-{int(time.time() * 1000) % 10**8}")
    Invitation.objects.create(tenant=tenant, email="ada@browser.test", role="admin")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=portal.url)
    csp = CspWatch(portal.url)
    csp.attach(context)
    page = context.new_page()

    # Log in at the provider and land in the portal.
    page.goto(f"{portal.url}/")
    expect(page).to_have_url(re.compile(r"/login/"))
    shoot(page, artifacts, "01-login", csp)
    page.get_by_role("link", name="Sign in with Test provider").click()
    expect(page).to_have_url(re.compile(re.escape(provider.issuer) + "/authorize"))
    shoot(page, artifacts, "02-provider-login", csp)
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password").fill("ada-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{portal.url}/t/{tenant.slug}/")
    expect(page.get_by_role("heading", level=1)).to_contain_text(tenant.slug)
    shoot(page, artifacts, "03-tenant-dashboard", csp)

    # Create a token: shown once, no-store, beside its ready .bazelrc.
    page.get_by_role("navigation").get_by_role("link", name="Tokens").click()
    shoot(page, artifacts, "04-tokens", csp)
    page.get_by_label("Name").fill("laptop")
    with page.expect_response(lambda r: r.request.method == "POST" and "/tokens/" in r.url) as posted:
        page.get_by_role("button", name="Create token").click()
    assert "no-store" in posted.value.headers["cache-control"]
    expect(page.get_by_role("heading", level=1)).to_contain_text("Token created")
    shoot(page, artifacts, "05-token-created", csp)
    pat = page.locator("#pat").inner_text().strip()
    assert re.fullmatch(r"aw_pat_[0-9A-Za-z]{36}", pat)
    snippet = page.locator("#bazelrc").inner_text()
    assert "build --remote_cache=grpc://127.0.0.1:8980" in snippet
    assert f"build --remote_header=X-Aspect={pat}" in snippet
    page.get_by_role("button", name="Copy .bazelrc").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == snippet
    assert all(pat not in c["value"] for c in context.cookies())

    # The token works on a real REAPI server; what it does there is counted for the Usage page.
    with external_server.channel() as channel:
        assert (
            Client(channel, pat)
            .get_capabilities()
            .cache_capabilities.action_cache_update_capabilities.update_enabled
        )
    traffic(external_server, pat)

    # Change the cache mode.
    page.get_by_role("link", name="Cache mode").click()
    shoot(page, artifacts, "06-cache-mode", csp)
    page.get_by_label(re.compile("Pass-through")).check()
    page.get_by_role("button", name="Save cache mode").click()
    expect(page.locator("#current-mode")).to_have_text("pass-through")
    shoot(page, artifacts, "07-cache-mode-saved", csp)
    assert Tenant.objects.get(pk=tenant.pk).cache_mode == "pass-through"

    # Revoke the token.
    page.get_by_role("navigation").get_by_role("link", name="Tokens").click()
    token = AccessToken.objects.get(tenant=tenant, name="laptop")
    row = page.locator(f"#token-{token.id}")
    row.get_by_role("button", name=re.compile("Revoke")).click()
    expect(page.locator(f"#token-{token.id} .status-revoked")).to_have_text("revoked")
    shoot(page, artifacts, "08-token-revoked", csp)
    assert AccessToken.objects.get(pk=token.pk).revoked_at is not None
    deadline = time.monotonic() + 5
    with external_server.channel() as channel:
        while True:
            try:
                Client(channel, pat).get_capabilities()
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                break
            assert time.monotonic() < deadline, "revocation did not reach the server within 5 s"
            time.sleep(0.2)

    # The server saves its counters every REAPI_USAGE_FLUSH_SECONDS (10).
    deadline = time.monotonic() + 30  # a flush or two, with room for a busy machine
    while usage_of(tenant) != EXPECTED:
        assert time.monotonic() < deadline, usage_of(tenant)
        time.sleep(0.5)

    # The other pages.
    for link, name in (
        ("Members", "09-members"),
        ("Usage", "10-usage"),
        (".bazelrc", "11-bazelrc-builder"),
        ("CI runners", "12-ci-runners"),
        ("Audit log", "13-audit-log"),
    ):
        page.get_by_role("navigation").get_by_role("link", name=link, exact=True).click()
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        shoot(page, artifacts, name, csp)
        if name == "10-usage":
            expect(page.locator("#total-hits")).to_have_text("1")
            expect(page.locator("#total-misses")).to_have_text("2")
    audit = page.locator("#audit-table").inner_text()
    for event in ("login", "token.issue", "token.first_use", "token.revoke", "tenant.mode", "member.join"):
        assert event in audit, event
    assert pat not in audit and token.prefix in audit

    page.get_by_role("navigation").get_by_role("link", name=".bazelrc", exact=True).click()
    page.get_by_label("Use").select_option("1")
    page.get_by_label("Download outputs").select_option("minimal")
    page.get_by_label(re.compile("Read-only")).check()
    page.get_by_role("button", name="Update snippet").click()
    built = page.locator("#bazelrc").inner_text()
    assert "--remote_executor=" in built and "--remote_download_minimal" in built
    assert "--noremote_upload_local_results" in built

    # Phone width: the same pages fit without sideways scrolling.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    csp.attach(phone)
    phone.add_cookies(context.cookies())  # type: ignore[arg-type]  # the same dicts, typed apart
    mobile = phone.new_page()
    for path, name in (
        ("", "14-phone-dashboard"),
        ("tokens/", "15-phone-tokens"),
        ("usage/", "16-phone-usage"),
    ):
        mobile.goto(f"{portal.url}/t/{tenant.slug}/{path}")
        expect(mobile.get_by_role("heading", level=1)).to_be_visible()
        assert no_horizontal_scroll(mobile), path
        shoot(mobile, artifacts, name, csp)
    phone.close()

    # The Workers page, which refreshes itself.
    page.get_by_role("navigation").get_by_role("link", name="Workers", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Workers and queues")
    shoot(page, artifacts, "17-workers", csp)

    # The watch sees a violation when there is one: an inline <style> added to a page is refused.
    page.evaluate("document.head.appendChild(document.createElement('style')).textContent = 'h1{}'")
    for _ in range(100):
        if csp.events and csp.console:
            break
        page.wait_for_timeout(100)
    assert any("style-src" in e for e in csp.events), csp.events
    assert any("style-src" in c for c in csp.console), csp.console
    csp.clear()

    # Sign out.
    page.get_by_role("button", name=re.compile("Sign out")).click()
    expect(page).to_have_url(re.compile(r"/login/"))
    csp.assert_clean("sign-out")
    assert csp.documents >= 20  # every portal page above was seen with its policy
    context.close()
