"""The audit log as people read it: who acted, which token, and what happened in words.

Events store their facts as JSON (portal/audit.py); this turns them into a sentence per event
for the Audit log page. Plain text only: the template escapes it.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet

from portal.models import AccessToken, AuditEvent, Membership, Tenant

# Events no person starts, and who they are by.
SYSTEM_ACTORS = {
    "token.first_use": "the token itself",
    "login.lockout": "sign-in throttle",
    "login.refused": "sign-in provider",
}
COMMAND_LINE = "command line"
# Sign-ins carry no tenant: a tenant's log shows its members'.
MEMBER_EVENTS = ("login", "login.lockout")


@dataclass(frozen=True)
class Row:
    event: AuditEvent
    by: str
    token_name: str
    detail: str


def events_of(tenant: Tenant) -> QuerySet[AuditEvent]:
    """The tenant's events and its members' sign-ins, each once: membership is asked in a
    subquery, never joined (a join repeats an event once per tenant its actor belongs to)."""
    members = Membership.objects.filter(tenant=tenant).values("user_id")
    return (
        AuditEvent.objects.filter(
            Q(tenant=tenant) | Q(tenant__isnull=True, action__in=MEMBER_EVENTS, actor_id__in=members)
        )
        .select_related("actor")
        .order_by("-created_at", "-id")
    )


def rows(tenant: Tenant, events: Iterable[AuditEvent]) -> list[Row]:
    events = list(events)
    prefixes = {e.token_prefix for e in events if e.token_prefix}
    names = dict(AccessToken.objects.filter(tenant=tenant, prefix__in=prefixes).values_list("prefix", "name"))
    return [
        Row(e, actor_label(e), str(e.detail.get("name") or names.get(e.token_prefix, "")), describe(e))
        for e in events
    ]


def actor_label(event: AuditEvent) -> str:
    if event.actor is not None:
        return event.actor.get_username()
    if event.actor_name:
        return f"{event.actor_name} (account deleted)"
    return SYSTEM_ACTORS.get(event.action, COMMAND_LINE)


def _list(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def describe(event: AuditEvent) -> str:
    d = event.detail or {}
    sentence = _SENTENCES.get(event.action)
    if sentence is None:
        return "; ".join(f"{k}: {_list(v)}" for k, v in d.items())
    return sentence(d)


Detail = dict[str, Any]


def _login(d: Detail) -> str:
    methods = {"password": "signed in with a password", "oidc": "signed in with OpenID Connect"}
    return methods.get(d.get("method", ""), "signed in")


def _lockout(d: Detail) -> str:
    who = d.get("address") if d.get("kind") == "address" else d.get("username") or "an account"
    return f"sign-ins for {d.get('kind', 'account')} {who} locked until {d.get('until', '?')}"


def _token_issue(d: Detail) -> str:
    parts = [f"for {d['owner']}" if d.get("owner") else "", f"scopes {_list(d.get('scopes', []))}"]
    if d.get("expires"):
        parts.append(f"expires {d['expires']}")
    return "; ".join(p for p in parts if p)


def _member_invite(d: Detail) -> str:
    change = f" (was {d['old']})" if d.get("old") else ""
    return f"{d.get('email', '?')} invited as {d.get('role', '?')}{change}"


def _member_remove(d: Detail) -> str:
    text = f"{d.get('username', '?')} removed"
    if "tokens_revoked" in d:
        text += f"; {d['tokens_revoked']} token(s) revoked"
    if d.get("ci_rules_removed"):
        text += f", {d['ci_rules_removed']} CI trust rule(s) deleted"
    return text


def _account_create(d: Detail) -> str:
    return f"local account {d.get('username', '?')} <{d.get('email', '')}> made; it sets its own password"


def _ci_trust(d: Detail) -> str:
    rule = f"{d.get('claim', '?')} = {d.get('value', '?')}"
    return f"CI runners with {rule} trusted; scopes {_list(d.get('scopes', []))}"


# An event's sentence, by its action; an action not here reads as its facts, "key: value; …".
_SENTENCES: dict[str, Callable[[Detail], str]] = {
    "login": _login,
    "login.lockout": _lockout,
    "token.issue": _token_issue,
    "token.revoke": lambda d: f"revoked because {d['reason']}" if d.get("reason") else "revoked",
    "token.first_use": lambda d: (
        "first used on the REST API" if d.get("via") == "api" else "first used by a build"
    ),
    "token.purge": lambda d: f"{d.get('entries', 0)} action-cache entries it wrote deleted",
    "tenant.create": lambda d: f"created, cache mode {d.get('mode', '?')}",
    "tenant.mode": lambda d: f"cache mode {d.get('old', '?')} → {d.get('new', '?')}",
    "member.add": lambda d: f"{d.get('username', '?')} added as {d.get('role', '?')}",
    "member.invite": _member_invite,
    "member.uninvite": lambda d: f"invitation for {d.get('email', '?')} cancelled",
    "member.join": lambda d: f"joined as {d.get('role', '?')} by the invitation for {d.get('email', '?')}",
    "member.role": lambda d: f"{d.get('username', '?')}: {d.get('old', '?')} → {d.get('new', '?')}",
    "member.remove": _member_remove,
    "account.create": _account_create,
    "account.password": lambda d: "set their password with the link an admin gave them",
    "account.link": lambda d: f"new set-password link for {d.get('username', '?')}",
    "ci.trust": _ci_trust,
    "ci.untrust": lambda d: (
        f"CI runners with {d.get('claim', '?')} = {d.get('value', '?')} no longer trusted"
    ),
}
