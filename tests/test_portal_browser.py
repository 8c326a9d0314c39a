"""The whole admin flow in Debian's Chromium, driven by Playwright, against real processes: the
test OpenID provider, the portal (`manage.py runserver`) and a REAPI server. A screenshot of
every page goes to tests/artifacts/portal-*.png. No page may break its Content-Security-Policy:
every `securitypolicyviolation` event and every console message about the policy fails the test."""

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Response,
    ViewportSize,
    expect,
    sync_playwright,
)

from portal import tenancy, tokens
from portal.csp import POLICY
from portal.models import SCOPES, AccessToken, AuditEvent, Invitation, Membership, Tenant, UsageDay
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.models import Invocation
from tests.support.execution_fixtures import ActionSpec, WorkerProcess, execution
from tests.support.oidc import OidcProvider, PortalServer
from tests.support.polling import wait_for
from tests.support.reapi_client import Client
from tests.support.servers import ReapiServer
from tests.support.usage_traffic import EXPECTED, traffic, usage_of

REQUEST_METADATA = "build.bazel.remote.execution.v2.requestmetadata-bin"

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
    # The provider's authorization endpoint sends the browser on to its own sign-in page.
    expect(page).to_have_url(re.compile(re.escape(provider.issuer) + "/interaction/"))
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
    with (
        page.expect_response(lambda r: r.request.method == "POST" and "/tokens/" in r.url) as posted,
        page.expect_response(lambda r: "/created/" in r.url) as shown,
    ):
        page.get_by_role("button", name="Create token").click()
    assert posted.value.status == 303  # post/redirect/get: a reload cannot post again
    assert "no-store" in posted.value.headers["cache-control"]
    assert "no-store" in shown.value.headers["cache-control"]
    expect(page.get_by_role("heading", level=1)).to_contain_text("Token created")
    shoot(page, artifacts, "05-token-created", csp)
    pat = page.locator("#pat").inner_text().strip()
    assert re.fullmatch(r"aw_pat_[0-9A-Za-z]{36}", pat)
    assert pat not in page.url
    snippet = page.locator("#bazelrc").inner_text()
    assert "build --remote_cache=grpc://127.0.0.1:8980" in snippet
    assert f"build --remote_header=X-Aspect={pat}" in snippet
    page.get_by_role("button", name="Copy remote cache .bazelrc").click()
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
    row.get_by_role("link", name=re.compile("Revoke")).click()  # the token's page asks first
    page.get_by_role("button", name=f"Revoke {token.prefix}…").click()
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


# --- The portal as people meet it: the first admin of `make run` (local password sign-in) and
# a developer, at desktop width and on a 390x844 phone. One browser, one sign-in per person;
# each case opens a desktop and a phone context from that person's saved state.

DESKTOP = ViewportSize(width=1280, height=900)
PHONE = ViewportSize(width=390, height=844)
WIDTHS = (("desktop", DESKTOP), ("phone", PHONE))


@dataclass
class Person:
    username: str
    password: str
    state: Any = None  # Playwright's storage state once signed in


@dataclass
class World:
    portal: PortalServer
    csp: CspWatch
    tenant: Tenant  # made from the command line
    admin: Person  # a superuser, as `make run` makes the first one; no member of `tenant`
    lead: Person  # the tenant's admin
    dev: Person  # a developer of the tenant


@pytest.fixture(scope="module")
def local_portal() -> Iterator[PortalServer]:
    """The portal as `make run` serves it: no OpenID provider, local password sign-in."""
    with PortalServer() as portal:
        yield portal


def sign_in(browser: Browser, portal: PortalServer, person: Person, csp: CspWatch) -> Any:
    context = browser.new_context(viewport=DESKTOP)
    csp.attach(context)
    page = context.new_page()
    page.goto(f"{portal.url}/login/")
    page.get_by_label("Username").fill(person.username)
    page.get_by_label("Password").fill(person.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    state = context.storage_state()
    context.close()
    return state


@pytest.fixture(scope="module")
def orm_beside_playwright() -> Iterator[None]:
    """Playwright's sync API keeps an event loop on this thread; the ORM calls made between
    browser steps are plain blocking calls, which Django allows once told so."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
        yield


@pytest.fixture(scope="module")
def world(local_portal: PortalServer, browser: Browser, orm_beside_playwright: None) -> World:
    suffix = uuid.uuid4().hex[:6]
    tenant = tenancy.create_tenant(f"ux-{suffix}")
    admin = Person(f"admin-{suffix}", "first-admin-password")
    get_user_model().objects.create_superuser(admin.username, password=admin.password)
    lead, dev = Person(f"lena-{suffix}", "lena-password-1"), Person(f"dev-{suffix}", "dev-password-1")
    for person, role in ((lead, "admin"), (dev, "developer")):
        tenancy.add_member(tenant, person.username, role)
        user = get_user_model().objects.get(username=person.username)
        user.email = f"{person.username}@ux.test"
        user.set_password(person.password)
        user.save()
    csp = CspWatch(local_portal.url)
    for person in (admin, lead, dev):
        person.state = sign_in(browser, local_portal, person, csp)
    return World(local_portal, csp, tenant, admin, lead, dev)


class Views:
    """One person's desktop and phone pages, watched for CSP violations."""

    def __init__(self, browser: Browser, world: World, person: Person) -> None:
        self.world = world
        self.contexts: dict[str, BrowserContext] = {}
        self.pages: dict[str, Page] = {}
        for width, viewport in WIDTHS:
            context = browser.new_context(
                viewport=viewport, is_mobile=width == "phone", storage_state=person.state
            )
            world.csp.attach(context)
            self.contexts[width] = context
            self.pages[width] = context.new_page()

    def __enter__(self) -> "Views":
        return self

    def __exit__(self, *exc: object) -> None:
        for context in self.contexts.values():
            context.close()

    def each(self) -> Iterator[tuple[str, Page]]:
        yield from self.pages.items()

    def url(self, path: str) -> str:
        return f"{self.world.portal.url}{path}"


def snap(page: Page, artifacts: Path, name: str, width: str, csp: CspWatch) -> None:
    """A screenshot of the whole page; on a phone, the page may not scroll sideways."""
    shoot(page, artifacts, f"ux-{name}-{width}", csp)
    if width == "phone":
        assert no_horizontal_scroll(page), f"{name}: the phone page scrolls sideways"


def open_menu(page: Page) -> None:
    toggle = page.get_by_role("button", name="Menu")
    if toggle.is_visible() and toggle.get_attribute("aria-expanded") != "true":
        toggle.click()


def go(page: Page, link: str) -> None:
    """Follow a link of the navigation, as a person would (through the menu on a phone)."""
    open_menu(page)
    page.get_by_role("navigation").get_by_role("link", name=link, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_be_visible()


def rightmost(page: Page, selector: str) -> float:
    """The right edge of what shows of `selector` and everything inside it. A part cut off by an
    ancestor that hides its overflow (an ellipsis) does not show; one an ancestor lets scroll
    sideways does count, since it is off screen until scrolled to."""
    return float(
        page.evaluate(
            """sel => {
                let furthest = 0;
                for (const e of document.querySelectorAll(sel + ', ' + sel + ' *')) {
                    let right = e.getBoundingClientRect().right;
                    for (let a = e.parentElement; a; a = a.parentElement) {
                        const overflow = getComputedStyle(a).overflowX;
                        if (overflow === 'hidden' || overflow === 'clip') {
                            right = Math.min(right, a.getBoundingClientRect().right);
                        }
                    }
                    furthest = Math.max(furthest, right);
                }
                return furthest;
            }""",
            selector,
        )
    )


def within_width(page: Page, locator: Any) -> bool:
    box = locator.bounding_box()
    width = page.viewport_size["width"] if page.viewport_size else 0
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width


def test_ux1_the_audit_log_lists_each_event_once_in_words(
    world: World, browser: Browser, artifacts: Path
) -> None:
    for _ in range(3):  # the lead is a member of four tenants
        tenancy.add_member(
            tenancy.create_tenant(f"also-{uuid.uuid4().hex[:8]}"), world.lead.username, "admin"
        )
    leaver = f"leaver-{uuid.uuid4().hex[:6]}"
    tenancy.add_member(world.tenant, leaver, "developer")
    tokens.issue(world.tenant, leaver, name="leaver-laptop", scopes="cas:read,ac:read")
    with Views(browser, world, world.lead) as views:
        page = views.pages["desktop"]
        page.goto(views.url(f"/t/{world.tenant.slug}/members/"))
        page.get_by_role("link", name=f"Remove {leaver}…").click()
        expect(page.locator("#remove-consequences")).to_contain_text("leaver-laptop")
        page.get_by_role("button", name=f"Remove {leaver}").click()
        expect(page.locator(".messages")).to_contain_text(f"{leaver} removed")
        for width, page in views.each():
            page.goto(views.url(f"/t/{world.tenant.slug}/audit/"))
            table = page.locator("#audit-table")
            expect(table.locator("code", has_text=re.compile(r"^member\.remove$"))).to_have_count(1)
            text = table.inner_text()
            assert f"{leaver} removed; 1 token(s) revoked" in text
            assert "scopes cas:read, ac:read" in text and "['" not in text
            assert "leaver-laptop" in text and "command line" in text
            detail = table.locator("tbody tr").first.locator('[data-label="Detail"]')
            expect(detail).to_be_visible()
            assert within_width(page, detail), f"{width}: the detail is off screen"
            snap(page, artifacts, "1-audit", width, world.csp)
    assert AuditEvent.objects.filter(tenant=world.tenant, action="member.remove").count() == 1


def test_ux2_error_pages_are_portal_pages_that_say_why(
    world: World, browser: Browser, artifacts: Path
) -> None:
    from django.test import RequestFactory

    from portal import error_views

    elsewhere = tenancy.create_tenant(f"private-{uuid.uuid4().hex[:6]}")
    crash = error_views.server_error(RequestFactory().get("/")).content
    with Views(browser, world, world.dev) as views:
        for width, page in views.each():
            # A tenant the developer is not in: 404, said without naming it.
            reply = page.goto(views.url(f"/t/{elsewhere.slug}/tokens/"))
            assert reply is not None and reply.status == 404
            expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")
            expect(page.locator("#why")).to_contain_text("not a member of")
            expect(page.get_by_role("link", name="Remote cache")).to_be_visible()
            assert "URLconf" not in page.content() and elsewhere.slug not in page.locator("main").inner_text()
            snap(page, artifacts, "2-404", width, world.csp)
            # An admin page: 403 with the tenant's navigation and the reason.
            reply = page.goto(views.url(f"/t/{world.tenant.slug}/audit/"))
            assert reply is not None and reply.status == 403
            expect(page.locator("#why")).to_contain_text("you are a developer there")
            open_menu(page)
            expect(
                page.get_by_role("navigation", name="Tenant").get_by_role("link", name="Tokens")
            ).to_be_visible()
            snap(page, artifacts, "2-403", width, world.csp)
            # The 500 page, as the portal renders it, in the browser with the portal's styles.
            page.route(
                "**/__server-error__",
                lambda route: route.fulfill(
                    status=500,
                    body=crash,
                    content_type="text/html",
                    headers={"content-security-policy": POLICY},
                ),
            )
            page.goto(views.url("/__server-error__"))
            expect(page.locator("#why")).to_contain_text("could not finish this request")
            expect(page.get_by_role("link", name="Your tenants")).to_be_visible()
            snap(page, artifacts, "2-500", width, world.csp)


def test_ux3_a_new_token_is_shown_once_and_a_reload_mints_nothing(
    world: World, browser: Browser, artifacts: Path
) -> None:
    dev = get_user_model().objects.get(username=world.dev.username)
    with Views(browser, world, world.dev) as views:
        for width, page in views.each():
            before = AccessToken.objects.filter(user=dev).count()
            page.goto(views.url(f"/t/{world.tenant.slug}/tokens/"))
            snap(page, artifacts, "3-tokens", width, world.csp)
            page.get_by_label("Name").fill(f"laptop-{width}")
            page.get_by_role("button", name="Create token").click()
            expect(page).to_have_url(re.compile(r"/tokens/\d+/created/"))
            pat = page.locator("#pat").inner_text().strip()
            assert re.fullmatch(r"aw_pat_[0-9A-Za-z]{36}", pat) and pat not in page.url
            snap(page, artifacts, "3-token-created", width, world.csp)
            page.reload()
            expect(page.locator("#shown-once")).to_contain_text("was shown once")
            assert pat not in page.content()
            snap(page, artifacts, "3-token-reloaded", width, world.csp)
            assert AccessToken.objects.filter(user=dev).count() == before + 1
            # The same name again is refused, naming the token it clashes with.
            page.goto(views.url(f"/t/{world.tenant.slug}/tokens/"))
            page.get_by_label("Name").fill(f"laptop-{width}")
            page.get_by_role("button", name="Create token").click()
            expect(page.locator(".errorlist")).to_contain_text("already has an active token named")
            expect(page.locator(".errorlist")).to_contain_text(pat[:13])
            snap(page, artifacts, "3-duplicate-name", width, world.csp)
            assert AccessToken.objects.filter(user=dev).count() == before + 1


def test_ux4_snippets_follow_the_tokens_scopes_and_the_builder_warns(
    world: World, browser: Browser, artifacts: Path
) -> None:
    with Views(browser, world, world.dev) as views:
        for width, page in views.each():
            page.goto(views.url(f"/t/{world.tenant.slug}/tokens/"))
            for scope in SCOPES:  # the one default set, execute included
                expect(page.get_by_label(scope, exact=True)).to_be_checked()
            page.get_by_label("Name").fill(f"full-{width}")
            page.get_by_role("button", name="Create token").click()
            expect(page.locator("#bazelrc")).to_contain_text("--remote_cache=")
            expect(page.locator("#bazelrc-exec")).to_contain_text("--remote_executor=")
            page.get_by_role("button", name="Copy remote execution .bazelrc").click()
            expect(page.get_by_role("button", name="Copied")).to_be_visible()
            snap(page, artifacts, "4-created-with-execute", width, world.csp)

            page.goto(views.url(f"/t/{world.tenant.slug}/tokens/"))
            page.get_by_label("Name").fill(f"cache-only-{width}")
            page.get_by_label("execute", exact=True).uncheck()
            page.get_by_role("button", name="Create token").click()
            expect(page.locator("#bazelrc")).to_contain_text("--remote_cache=")
            expect(page.locator("#bazelrc-exec")).to_have_count(0)
            expect(page.locator("#no-execute")).to_contain_text("not authorized")
            snap(page, artifacts, "4-created-cache-only", width, world.csp)

        reader = f"reader-{uuid.uuid4().hex[:4]}"
        lead = get_user_model().objects.get(username=world.lead.username)
        AccessToken.objects.filter(tenant=world.tenant, user=lead).update(revoked_at=timezone.now())
        tokens.issue(world.tenant, world.lead.username, name=reader, scopes="cas:read,ac:read")
    with Views(browser, world, world.lead) as views:
        for width, page in views.each():
            page.goto(views.url(f"/t/{world.tenant.slug}/bazelrc/"))
            page.get_by_label("Use").select_option("1")
            page.get_by_role("button", name="Update snippet").click()
            expect(page.locator("#execute-warning")).to_contain_text("None of your active tokens has it")
            expect(page.locator("#execute-warning")).to_contain_text(reader)
            snap(page, artifacts, "4-builder-warns", width, world.csp)


def test_ux5_admins_issue_tokens_for_members_and_a_superuser_joins_first(
    world: World, browser: Browser, artifacts: Path
) -> None:
    with Views(browser, world, world.admin) as views:
        for width, page in views.each():
            made = tenancy.create_tenant(f"cli-{uuid.uuid4().hex[:6]}")  # `manage.py tenant create`
            page.goto(views.url(f"/t/{made.slug}/tokens/"))
            expect(page.locator("#not-a-member")).to_contain_text("not as one of its members")
            expect(page.get_by_label("Name")).to_have_count(0)  # no form: nobody could hold the token
            assert "is not a member" not in page.content()
            snap(page, artifacts, "5-superuser-not-a-member", width, world.csp)
            page.get_by_role("button", name=re.compile("as admin")).click()
            expect(page.locator(".messages")).to_contain_text("joined")
            tenancy.add_member(made, world.dev.username, "developer")
            page.reload()
            page.get_by_label("Name").fill("handed-over")
            page.get_by_label("Owner").select_option(label=world.dev.username)
            page.get_by_role("button", name="Create token").click()
            expect(page.locator("label[for=pat]")).to_contain_text("hand it to them")
            snap(page, artifacts, "5-token-for-a-member", width, world.csp)
            token = AccessToken.objects.get(tenant=made, name="handed-over")
            assert token.user.get_username() == world.dev.username
            assert (
                AuditEvent.objects.get(tenant=made, action="token.issue").actor_name == world.admin.username
            )


def test_ux6_an_admin_gives_a_newcomer_a_local_account(
    world: World, browser: Browser, artifacts: Path
) -> None:
    with Views(browser, world, world.lead) as views:
        for width, page in views.each():
            name = f"newbie-{width}-{uuid.uuid4().hex[:4]}"
            page.goto(views.url(f"/t/{world.tenant.slug}/members/"))
            snap(page, artifacts, "6-members", width, world.csp)
            form = page.locator("#new-account + .card")
            form.get_by_label("Username").fill(name)
            form.get_by_label("Email").fill(f"{name}@ux.test")
            form.get_by_role("button", name="Make account").click()
            link = page.locator("#set-password-link").inner_text().strip()
            assert "/set-password/" in link
            snap(page, artifacts, "6-account-made", width, world.csp)
            page.reload()
            expect(page.locator("#shown-once")).to_contain_text("shown once")
            # The newcomer opens the link in a browser of their own.
            newcomer = browser.new_context(
                viewport=PHONE if width == "phone" else DESKTOP, is_mobile=width == "phone"
            )
            world.csp.attach(newcomer)
            theirs = newcomer.new_page()
            theirs.goto(link)
            expect(theirs.get_by_role("heading", level=1)).to_have_text("Set your password")
            snap(theirs, artifacts, "6-set-password", width, world.csp)
            theirs.get_by_label("New password").fill("newcomer passphrase 1")
            theirs.get_by_label("The same again").fill("newcomer passphrase 1")
            theirs.get_by_role("button", name="Set password").click()
            expect(theirs.get_by_role("heading", level=1)).to_have_text("Password set")
            snap(theirs, artifacts, "6-password-set", width, world.csp)
            theirs.get_by_role("link", name="Sign in").click()
            theirs.get_by_label("Username").fill(name)
            theirs.get_by_label("Password").fill("newcomer passphrase 1")
            theirs.get_by_role("button", name="Sign in").click()
            expect(theirs).to_have_url(f"{world.portal.url}/t/{world.tenant.slug}/")
            newcomer.close()
            assert Membership.objects.get(tenant=world.tenant, user__username=name).role == "developer"


def test_ux7_revoke_and_remove_are_asked_first(world: World, browser: Browser, artifacts: Path) -> None:
    with Views(browser, world, world.lead) as views:
        for width, page in views.each():
            token = tokens.issue(world.tenant, world.dev.username, name=f"to-revoke-{width}").token
            page.goto(views.url(f"/t/{world.tenant.slug}/tokens/"))
            open_menu(page)  # on a phone, and closed again by the page change below
            page.locator(f"#token-{token.id}").get_by_role("link", name=re.compile("Revoke")).click()
            expect(page.get_by_role("heading", name="Revoke this token?")).to_be_visible()
            expect(page.locator(".notice.danger")).to_contain_text("cannot be undone")
            snap(page, artifacts, "7-revoke-asked", width, world.csp)
            page.get_by_role("link", name="Keep it").click()
            assert AccessToken.objects.get(pk=token.pk).revoked_at is None
            # Two tabs on the token's page: the second revoke finds it revoked already.
            other = views.contexts[width].new_page()
            other.goto(views.url(f"/t/{world.tenant.slug}/tokens/{token.id}/"))
            page.goto(views.url(f"/t/{world.tenant.slug}/tokens/{token.id}/"))
            page.get_by_role("button", name=f"Revoke {token.prefix}…").click()
            expect(page.locator(f"#token-{token.id} .status-revoked")).to_have_text("revoked")
            other.get_by_role("button", name=f"Revoke {token.prefix}…").click()
            expect(other.locator(".messages")).to_contain_text("was already revoked")
            snap(other, artifacts, "7-already-revoked", width, world.csp)
            other.close()
            assert AuditEvent.objects.filter(action="token.revoke", token_prefix=token.prefix).count() == 1

            member = Membership.objects.get(tenant=world.tenant, user__username=world.dev.username)
            page.goto(views.url(f"/t/{world.tenant.slug}/members/"))
            page.get_by_role("link", name=f"Remove {world.dev.username}…").click()
            expect(page.locator("#remove-consequences")).to_contain_text("revoked")
            snap(page, artifacts, "7-remove-asked", width, world.csp)
            page.get_by_role("link", name="Keep them").click()
            assert Membership.objects.filter(pk=member.pk).exists()


def test_ux8_long_names_stay_inside_the_screen(world: World, browser: Browser, artifacts: Path) -> None:
    long_name = "a-very-long-token-name-" + "x" * 177
    assert len(long_name) == 200
    token = tokens.issue(world.tenant, world.lead.username, name=long_name).token
    long_slug = ("long-" + uuid.uuid4().hex * 3)[:62] + "z"
    tenancy.add_member(tenancy.create_tenant(long_slug), world.lead.username, "admin")
    with Views(browser, world, world.lead) as views:
        for width, page in views.each():
            viewport = page.viewport_size["width"] if page.viewport_size else 0
            page.goto(views.url(f"/t/{world.tenant.slug}/tokens/"))
            assert rightmost(page, "#token-table") <= viewport, f"{width}: the tokens table passes the edge"
            revoke = page.locator(f"#token-{token.id}").get_by_role("link", name=re.compile("Revoke"))
            revoke.scroll_into_view_if_needed()
            expect(revoke).to_be_visible()
            assert within_width(page, revoke), f"{width}: Revoke is off screen"
            name = page.locator(f"#token-{token.id} a.name")
            assert name.get_attribute("title") == long_name  # the whole name on hover
            name.focus()  # and in full on focus
            assert (name.bounding_box() or {"height": 0})["height"] > 40
            snap(page, artifacts, "8-long-token-name", width, world.csp)
            page.goto(views.url("/"))
            card = page.locator(".tenant-card", has_text=long_slug[:20])
            assert within_width(page, card) and rightmost(page, ".grid") <= viewport
            snap(page, artifacts, "8-dashboard-long-slug", width, world.csp)
            page.goto(views.url(f"/t/{long_slug}/members/"))
            assert rightmost(page, "header") <= viewport and rightmost(page, "main") <= viewport
            if width == "phone":
                header = page.locator("header").bounding_box()
                assert header is not None and header["height"] < 70, "the navigation is one line"
                open_menu(page)
                expect(
                    page.get_by_role("navigation", name="Tenant").get_by_role("link", name="Usage")
                ).to_be_visible()
                snap(page, artifacts, "8-phone-menu-open", width, world.csp)
            else:
                snap(page, artifacts, "8-long-slug-members", width, world.csp)


def test_ux9_usage_splits_explains_and_reads_on_a_phone(
    world: World, browser: Browser, artifacts: Path
) -> None:
    dev = get_user_model().objects.get(username=world.dev.username)
    mine = tokens.issue(world.tenant, world.dev.username, name="usage-laptop").token
    today = timezone.now().date()
    # What the REAPI servers flush (tests/test_portal_usage.py counts it from real traffic).
    for days_ago, cluster, token, hits in (
        (0, "external", mine, 7),
        (3, "internal", None, 20),
        (9, "external", mine, 2),
    ):
        UsageDay.objects.create(
            tenant=world.tenant,
            cluster=cluster,
            day=today - timedelta(days=days_ago),
            user=dev,
            token=token,
            hits=hits,
            misses=hits // 2,
            bytes_stored=hits * 300_000,
            bytes_served=hits * 700_000,
        )
    with Views(browser, world, world.lead) as views:
        for width, page in views.each():
            page.goto(views.url(f"/t/{world.tenant.slug}/usage/"))
            expect(page.locator("#total-hits")).to_have_text("29")
            expect(page.get_by_text("Downloaded from the cache by builds")).to_be_visible()
            expect(page.locator("#usage-table tbody tr")).to_have_count(3)  # the empty days left out
            expect(page.locator(".split").filter(has_text="By cluster")).to_contain_text("internal")
            expect(page.locator(".split").filter(has_text="By member")).to_contain_text(world.dev.username)
            label = page.locator("svg.chart text.y").last.bounding_box()
            assert label is not None and label["height"] >= 10, f"{width}: chart text {label}"
            snap(page, artifacts, "9-usage", width, world.csp)
            page.get_by_label("Show").select_option(f"token:{mine.pk}")  # applies on change
            expect(page.locator("#showing")).to_contain_text("usage-laptop")
            expect(page.locator("#total-hits")).to_have_text("9")
            snap(page, artifacts, "9-usage-one-token", width, world.csp)


@pytest.fixture(scope="module")
def execution_worker(external_server: ReapiServer) -> Iterator[WorkerProcess]:
    with WorkerProcess("external", "x86-64", {}, concurrency=1) as worker:
        yield worker


def test_ux10_the_workers_page_keeps_the_tenant_and_shows_a_failures_stderr(
    world: World,
    browser: Browser,
    artifacts: Path,
    external_server: ReapiServer,
    execution_worker: WorkerProcess,
) -> None:
    pat = tokens.issue(world.tenant, world.dev.username, name="remote-exec").secret
    script = 'echo compiling; echo "<b>ld:</b> undefined reference to main" >&2; exit 3'
    with external_server.channel() as channel:
        client = Client(channel, pat)
        meta = re_pb2.RequestMetadata(action_mnemonic="CppLink", target_id="//app:server")
        action = ActionSpec(["/bin/sh", "-c", script], salt=uuid.uuid4().bytes).upload(client)
        updates = list(
            execution(client).Execute(
                re_pb2.ExecuteRequest(action_digest=action, skip_cache_lookup=True),
                metadata=(*client.metadata, (REQUEST_METADATA, meta.SerializeToString())),
                timeout=60,
            )
        )
    assert updates[-1].done
    with Views(browser, world, world.dev) as views:
        for width, page in views.each():
            page.goto(views.url(f"/t/{world.tenant.slug}/"))
            go(page, "Workers")
            expect(page).to_have_url(f"{world.portal.url}/t/{world.tenant.slug}/workers/")
            open_menu(page)
            expect(
                page.get_by_role("navigation", name="Tenant").get_by_role("link", name="Tokens")
            ).to_be_visible()
            failures = page.locator("#failures")
            expect(failures).to_contain_text("CppLink //app:server")
            expect(failures).to_contain_text("exit 3")
            expect(page.locator("#completed")).to_contain_text("CppLink //app:server")
            assert "0 minutes ago" not in page.locator("main").inner_text()
            snap(page, artifacts, "10-workers", width, world.csp)
            failures.get_by_role("link", name="stderr and details").first.click()
            expect(page.locator("#stderr-tail")).to_contain_text("<b>ld:</b> undefined reference to main")
            expect(page.locator("#op-what")).to_have_text("CppLink //app:server")
            snap(page, artifacts, "10-failed-action", width, world.csp)


def test_ux11_one_slug_rule_one_invitation_and_no_stale_snippet(
    world: World, browser: Browser, artifacts: Path
) -> None:
    with Views(browser, world, world.admin) as views:
        for width, page in views.each():
            page.goto(views.url("/"))
            page.get_by_label("Slug").fill("a_b")
            page.get_by_role("button", name="Create tenant").click()
            expect(page.locator(".errorlist")).to_contain_text(f"is not a valid slug: {tenancy.SLUG_RULE}")
            expect(page.locator(".helptext", has_text=tenancy.SLUG_RULE)).to_be_visible()
            snap(page, artifacts, "11-bad-slug", width, world.csp)
            assert not Tenant.objects.filter(slug="a_b").exists()

            email = f"twice-{width}@ux.test"
            page.goto(views.url(f"/t/{world.tenant.slug}/members/"))
            for _ in range(2):
                page.get_by_label("Email", exact=True).first.fill(email)
                page.get_by_role("button", name="Invite").click()
            expect(page.locator(".messages")).to_contain_text("already invited")
            assert AuditEvent.objects.filter(action="member.invite", detail__email=email).count() == 1

            # The browser will not submit a timeout out of range, but a link can carry one.
            page.goto(
                views.url(
                    f"/t/{world.tenant.slug}/bazelrc/?cluster=external&execution=1&download=all&timeout=0"
                )
            )
            expect(page.locator("#id_timeout_error")).to_contain_text("greater than or equal to 1")
            expect(page.locator("#no-snippet")).to_be_visible()
            expect(page.locator("#bazelrc")).to_have_count(0)
            expect(page.get_by_role("button", name="Copy .bazelrc")).to_have_count(0)
            snap(page, artifacts, "11-builder-error", width, world.csp)


def test_ux12_a_developer_reads_why_each_action_of_a_build_missed(
    world: World, browser: Browser, artifacts: Path, external_server: ReapiServer
) -> None:
    pat = tokens.issue(world.tenant, world.dev.username, name="builds-laptop").secret
    builds = [str(uuid.uuid4()), str(uuid.uuid4())]
    argv = ["/bin/sh", "-c", "cc -o bin/server src/main.c src/util.c"]
    with external_server.channel() as channel:
        client = Client(channel, pat)
        for build, (x, main) in zip(
            builds, (("alpha", b"int main;"), ("beta", b"int main(){}")), strict=True
        ):
            for target, out in (("//app:server", "bin/server"), ("//app:tool", "bin/tool")):
                spec = ActionSpec(
                    [*argv, out],
                    inputs={"src": {"main.c": main, "util.c": b"int util;"}, "BUILD": b"cc_binary()"},
                    env={"PATH": "/bin", "X": x},
                    output_files=[out],
                )
                meta = re_pb2.RequestMetadata(
                    tool_invocation_id=build,
                    action_mnemonic="CppLink",
                    target_id=target,
                    tool_details=re_pb2.ToolDetails(tool_name="bazel", tool_version="4.2.3"),
                )
                with pytest.raises(grpc.RpcError):
                    client.ac.GetActionResult(
                        re_pb2.GetActionResultRequest(action_digest=spec.upload(client)),
                        metadata=(*client.metadata, (REQUEST_METADATA, meta.SerializeToString())),
                    )
    wait_for(lambda: Invocation.objects.filter(invocation_id__in=builds, misses=2).count() == 2, timeout=60)
    with Views(browser, world, world.dev) as views:
        for width, page in views.each():
            page.goto(views.url(f"/t/{world.tenant.slug}/"))
            go(page, "Builds")
            expect(page.locator("#invocations-table tbody tr")).to_have_count(2)
            snap(page, artifacts, "12-builds", width, world.csp)
            page.get_by_role("link", name=builds[1]).click()
            expect(page.locator(".miss")).to_have_count(2)
            first = page.locator(".miss").first
            expect(first).to_contain_text("environment variable X changed: alpha → beta")
            expect(first).to_contain_text("input file changed: src/main.c")
            expect(first).to_contain_text("bin/server")
            snap(page, artifacts, "12-build-explained", width, world.csp)


def test_ux_every_other_page_at_both_widths(world: World, browser: Browser, artifacts: Path) -> None:
    """The pages the cases above do not already photograph, each at both widths."""
    slug = world.tenant.slug
    for width, viewport in WIDTHS:
        anonymous = browser.new_context(viewport=viewport, is_mobile=width == "phone")
        world.csp.attach(anonymous)
        page = anonymous.new_page()
        page.goto(f"{world.portal.url}/login/")
        snap(page, artifacts, "0-login", width, world.csp)
        # A form left open until its CSRF cookie is gone: refused on a page that says why.
        anonymous.clear_cookies()
        page.get_by_label("Username").fill(world.dev.username)
        page.get_by_label("Password").fill(world.dev.password)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#failure")).to_contain_text("CSRF check failed")
        snap(page, artifacts, "0-request-refused", width, world.csp)
        anonymous.close()
    with Views(browser, world, world.lead) as views:
        for width, page in views.each():
            for path, name in (
                ("/", "0-dashboard"),
                (f"/t/{slug}/", "0-tenant"),
                (f"/t/{slug}/bazelrc/", "0-bazelrc"),
                (f"/t/{slug}/cache-mode/", "0-cache-mode"),
                (f"/t/{slug}/ci/", "0-ci-runners"),
                (f"/t/{slug}/members/", "0-members"),
                ("/workers/", "0-workers-all-tenants"),
            ):
                reply = page.goto(views.url(path))
                assert reply is not None and reply.status == 200, path
                expect(page.get_by_role("heading", level=1)).to_be_visible()
                snap(page, artifacts, name, width, world.csp)
    world.csp.assert_clean("every page")
