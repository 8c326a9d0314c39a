"""The reading pages: the Audit log (admins) and Usage (every member; developers see their
own tokens and no one else's in its splits)."""

from dataclasses import dataclass

from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from portal import audit_display, usage
from portal.access import TenantAccess
from portal.models import AccessToken, Membership
from portal.views import page, tenant_view

USAGE_DAYS = 30


@tenant_view(admin=True)
@require_GET
def audit_log(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    paginator = Paginator(audit_display.events_of(acc.tenant), 50)
    page_obj = paginator.get_page(request.GET.get("page"))
    return page(
        request, acc, "audit", page_obj=page_obj, rows=audit_display.rows(acc.tenant, page_obj.object_list)
    )


@dataclass(frozen=True)
class Choice:
    value: str
    label: str
    only: Q | None


def usage_choices(acc: TenantAccess) -> list[tuple[str, list[Choice]]]:
    """What the Usage page can be narrowed to, in groups: the whole tenant or one cluster, one
    member (admins; developers only themselves), one token (developers only their own)."""
    everyone = [
        Choice("all", "Whole tenant, both clusters", None),
        Choice("cluster:external", "External cluster (workstations)", Q(cluster="external")),
        Choice("cluster:internal", "Internal cluster (CI)", Q(cluster="internal")),
    ]
    members = Membership.objects.filter(tenant=acc.tenant).select_related("user").order_by("user__username")
    if not acc.is_admin:
        members = members.filter(user=acc.user)
    people = [Choice(f"member:{m.user_id}", m.user.get_username(), Q(user_id=m.user_id)) for m in members]
    tokens = AccessToken.objects.filter(tenant=acc.tenant).select_related("user").order_by("name", "pk")
    if not acc.is_admin:
        tokens = tokens.filter(user=acc.user)
    own = [
        Choice(
            f"token:{t.pk}", f"{t.name or 'unnamed'} ({t.prefix}…, {t.user.get_username()})", Q(token_id=t.pk)
        )
        for t in tokens
    ]
    return [("Tenant", everyone), ("Member", people), ("Token", own)]


@tenant_view()
@require_GET
def usage_page(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    groups = usage_choices(acc)
    choices = {c.value: c for _, group in groups for c in group}
    wanted = request.GET.get("view", "all")
    chosen = choices.get(wanted)
    if chosen is None:
        # An unknown value, or another member's token for a developer: said, not guessed.
        return page(
            request,
            acc,
            "usage",
            groups=groups,
            chosen=choices["all"],
            refused=True,
            status=400,
            **_usage(acc, None),
        )
    return page(request, acc, "usage", groups=groups, chosen=chosen, **_usage(acc, chosen.only))


def _usage(acc: TenantAccess, only: Q | None) -> dict[str, object]:
    days = usage.daily(acc.tenant, days=USAGE_DAYS, only=only)
    splits = [("cluster", "By cluster")]
    if acc.is_admin:
        splits.append(("member", "By member"))
    splits.append(("token", "By token"))
    mine = None if acc.is_admin else Q(user=acc.user)
    shares = []
    for by, title in splits:
        narrowed = only if by != "token" or mine is None else (mine if only is None else only & mine)
        shares.append((title, usage.split(acc.tenant, by, USAGE_DAYS, narrowed)))
    return {
        "days": days,
        "active_days": [d for d in reversed(days) if not d.empty],
        "hit_chart": usage.hits_chart(days),
        "bytes_chart": usage.bytes_chart(days),
        "totals": usage.totals(acc.tenant, days=USAGE_DAYS, only=only),
        "shares": shares,
        "period": USAGE_DAYS,
    }
