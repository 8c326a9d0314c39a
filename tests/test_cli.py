"""The contract command line: tenant and token commands, run as real processes."""

import re
import uuid

from portal import pats
from portal.models import AccessToken, AuditEvent, Membership, Tenant
from tests.support.servers import manage


def slug() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


def test_it_creates_a_tenant_adds_members_and_switches_mode() -> None:
    s = slug()
    out = manage("tenant", "create", s, "--mode", "pass-through")
    assert "created tenant" in out.stdout
    assert Tenant.objects.get(slug=s).cache_mode == "pass-through"
    manage("tenant", "mode", s, "independent")
    assert Tenant.objects.get(slug=s).cache_mode == "independent"
    manage("tenant", "add-member", s, f"dora-{s}", "--role", "admin")
    membership = Membership.objects.get(tenant__slug=s)
    assert membership.role == "admin" and membership.user.username == f"dora-{s}"
    actions = set(AuditEvent.objects.filter(tenant__slug=s).values_list("action", flat=True))
    assert {"tenant.create", "tenant.mode", "member.add"} <= actions


def test_it_refuses_bad_tenant_input() -> None:
    assert manage("tenant", "create", "Not A Slug", check=False).returncode != 0
    bad = manage("tenant", "create", "blobs", check=False)
    assert bad.returncode != 0 and "reserved" in bad.stderr
    missing = manage("tenant", "mode", "no-such-tenant", "independent", check=False)
    assert missing.returncode != 0 and "no tenant 'no-such-tenant'" in missing.stderr
    s = slug()
    manage("tenant", "create", s)
    dup = manage("tenant", "create", s, check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr


def test_it_issues_a_token_alone_on_the_last_line_and_stores_only_its_digest() -> None:
    s = slug()
    manage("tenant", "create", s)
    manage("tenant", "add-member", s, f"erin-{s}")
    out = manage(
        "token",
        "issue",
        "--tenant",
        s,
        "--user",
        f"erin-{s}",
        "--name",
        "laptop",
        "--scopes",
        "cas:read,ac:read",
        "--expires-in",
        "7",
    )
    pat = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"aw_pat_[0-9A-Za-z]{36}", pat)
    token = AccessToken.objects.get(digest=pats.digest(pat))
    assert token.scopes == "cas:read,ac:read" and token.name == "laptop"
    assert token.prefix == pat[:13]
    assert token.expires_at is not None and (token.expires_at - token.created_at).days == 7
    assert not AccessToken.objects.filter(digest=pat).exists()
    listing = manage("token", "list", "--tenant", s).stdout
    assert token.prefix in listing and pat not in listing and "active" in listing


def test_tokens_expire_in_ninety_days_by_default_and_never_only_when_allowed() -> None:
    s = slug()
    manage("tenant", "create", s)
    manage("tenant", "add-member", s, f"finn-{s}")
    pat = manage("token", "issue", "--tenant", s, "--user", f"finn-{s}").stdout.splitlines()[-1]
    token = AccessToken.objects.get(digest=pats.digest(pat))
    assert token.expires_at is not None and (token.expires_at - token.created_at).days == 90
    assert token.scopes == "cas:read,ac:read,cas:write,ac:write,execute"
    never = manage("token", "issue", "--tenant", s, "--user", f"finn-{s}", "--expires-in", "0", check=False)
    assert never.returncode != 0 and "never expire" in never.stderr


def test_it_refuses_bad_token_input() -> None:
    s = slug()
    manage("tenant", "create", s)
    manage("tenant", "add-member", s, f"gus-{s}")
    scope = manage(
        "token", "issue", "--tenant", s, "--user", f"gus-{s}", "--scopes", "cas:read,admin", check=False
    )
    assert scope.returncode != 0 and "unknown scope(s) admin" in scope.stderr
    outsider = manage("token", "issue", "--tenant", s, "--user", "nobody-at-all", check=False)
    assert outsider.returncode != 0 and "no user 'nobody-at-all'" in outsider.stderr
    garbage = manage("token", "revoke", "aw_pat_garbage", check=False)
    assert garbage.returncode != 0 and "not a personal access token" in garbage.stderr


def test_it_revokes_by_token_and_by_id() -> None:
    s = slug()
    manage("tenant", "create", s)
    manage("tenant", "add-member", s, f"hal-{s}")
    first = manage("token", "issue", "--tenant", s, "--user", f"hal-{s}").stdout.splitlines()[-1]
    second = manage("token", "issue", "--tenant", s, "--user", f"hal-{s}").stdout.splitlines()[-1]
    manage("token", "revoke", first)
    second_id = AccessToken.objects.get(digest=pats.digest(second)).id
    manage("token", "revoke", str(second_id))
    assert AccessToken.objects.filter(tenant__slug=s, revoked_at__isnull=False).count() == 2
    assert AuditEvent.objects.filter(tenant__slug=s, action="token.revoke").count() == 2
    assert "revoked" in manage("token", "list", "--tenant", s).stdout


def test_it_issues_portal_admin_only_when_named_and_only_to_admins() -> None:
    s = slug()
    manage("tenant", "create", s)
    manage("tenant", "add-member", s, f"ivy-{s}", "--role", "admin")
    manage("tenant", "add-member", s, f"jon-{s}")
    default = manage("token", "issue", "--tenant", s, "--user", f"ivy-{s}").stdout.splitlines()[-1]
    assert "portal:admin" not in AccessToken.objects.get(digest=pats.digest(default)).scope_list
    named = manage(
        "token", "issue", "--tenant", s, "--user", f"ivy-{s}", "--scopes", "cas:read,portal:admin"
    ).stdout.splitlines()[-1]
    assert AccessToken.objects.get(digest=pats.digest(named)).scope_list == ["cas:read", "portal:admin"]
    developer = manage(
        "token", "issue", "--tenant", s, "--user", f"jon-{s}", "--scopes", "portal:admin", check=False
    )
    assert developer.returncode != 0 and "only the tenant's admins may hold portal:admin" in developer.stderr
    assert not AccessToken.objects.filter(tenant__slug=s, user__username=f"jon-{s}").exists()
    assert "portal:admin" in manage("token", "issue", "--help").stdout


def test_it_refuses_an_expiry_past_ten_years() -> None:
    s = slug()
    manage("tenant", "create", s)
    manage("tenant", "add-member", s, f"kim-{s}")
    far = manage(
        "token", "issue", "--tenant", s, "--user", f"kim-{s}", "--expires-in", "999999999", check=False
    )
    assert far.returncode != 0 and "at most 3650 days" in far.stderr
    assert not AccessToken.objects.filter(tenant__slug=s).exists()
