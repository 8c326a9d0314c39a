"""Reading the usage counters the gRPC servers flush (reapi/usage.py) for the portal."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone
from django.utils.safestring import SafeString

from portal import charts
from portal.models import AccessToken, Tenant, UsageDay

SUMS = {
    "hits": Sum("hits"),
    "misses": Sum("misses"),
    "bytes_stored": Sum("bytes_stored"),
    "bytes_served": Sum("bytes_served"),
}


@dataclass(frozen=True)
class Day:
    day: date
    hits: int = 0
    misses: int = 0
    bytes_stored: int = 0
    bytes_served: int = 0

    @property
    def hit_rate(self) -> str:
        asked = self.hits + self.misses
        return f"{100 * self.hits / asked:.0f}%" if asked else "–"

    @property
    def empty(self) -> bool:
        return not (self.hits or self.misses or self.bytes_stored or self.bytes_served)


def rows_of(tenant: Tenant, days: int, only: Q | None = None) -> "QuerySet[UsageDay]":
    first = timezone.now().date() - timedelta(days=days - 1)
    rows = UsageDay.objects.filter(tenant=tenant, day__gte=first)
    return rows.filter(only) if only is not None else rows


def daily(tenant: Tenant, days: int = 30, only: Q | None = None) -> list[Day]:
    """One row per UTC day, oldest first, every cluster and credential added up (or those
    `only` selects); days without traffic are zero."""
    today = timezone.now().date()
    first = today - timedelta(days=days - 1)
    rows: Any = rows_of(tenant, days, only).values("day").annotate(**SUMS)
    by_day = {r["day"]: r for r in rows}
    out = []
    for i in range(days):
        d = first + timedelta(days=i)
        r = by_day.get(d)
        out.append(Day(d, r["hits"], r["misses"], r["bytes_stored"], r["bytes_served"]) if r else Day(d))
    return out


def totals(tenant: Tenant, days: int = 7, only: Q | None = None) -> Day:
    rows = daily(tenant, days, only)
    return Day(
        rows[-1].day,
        sum(r.hits for r in rows),
        sum(r.misses for r in rows),
        sum(r.bytes_stored for r in rows),
        sum(r.bytes_served for r in rows),
    )


def hits_chart(days: list[Day]) -> SafeString:
    series = [("hits", "hits", "s-hit"), ("misses", "misses", "s-miss")]
    return _per_day("Action cache hits and misses per day", days, series)


def bytes_chart(days: list[Day]) -> SafeString:
    series = [("stored", "bytes_stored", "s-stored"), ("served", "bytes_served", "s-served")]
    return _per_day(
        "Bytes stored and served per day", days, series, fmt=charts.human_bytes, axis=charts.byte_axis
    )


def _per_day(
    title: str,
    days: list[Day],
    series: list[tuple[str, str, str]],
    fmt: Callable[[int], str] = str,
    axis: Callable[[int], charts.Axis] = charts.count_axis,
) -> SafeString:
    """A bar chart of `days`, one series per (label, Day field, CSS class)."""
    bars = [charts.Series(label, [getattr(d, field) for d in days], css) for label, field, css in series]
    return charts.bar_chart(title, [d.day for d in days], bars, fmt, axis)


@dataclass(frozen=True)
class Share:
    """One cluster's, member's or token's part of the traffic over the period."""

    label: str
    totals: Day


def split(tenant: Tenant, by: str, days: int = 30, only: Q | None = None) -> list[Share]:
    """The period's traffic per cluster, member or token, largest first, without the silent."""
    field = {"cluster": "cluster", "member": "user__username", "token": "token_id"}[by]
    rows: Any = list(rows_of(tenant, days, only).values(field).annotate(**SUMS))
    names = {}
    if by == "token":
        names = {
            t.pk: f"{t.name or 'unnamed'} ({t.prefix}…, {t.user.get_username()})"
            for t in AccessToken.objects.filter(pk__in=[r[field] for r in rows if r[field]]).select_related(
                "user"
            )
        }
    shares = []
    for r in rows:
        day = Day(timezone.now().date(), r["hits"], r["misses"], r["bytes_stored"], r["bytes_served"])
        if day.empty:
            continue
        key = r[field]
        if by == "token":
            label = names.get(key, "") if key else "CI runners (OpenID), or counted before per-token counts"
        else:
            label = str(key) if key else "counted before per-member counts"
        shares.append(Share(label, day))
    return sorted(shares, key=lambda s: (-(s.totals.hits + s.totals.misses), -s.totals.bytes_served, s.label))
