"""Reading the usage counters the gRPC servers flush (reapi/usage.py) for the portal."""

from dataclasses import dataclass
from datetime import date, timedelta

from django.db.models import Sum
from django.utils import timezone
from django.utils.safestring import SafeString

from portal import charts
from portal.models import Tenant, UsageDay


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


def daily(tenant: Tenant, days: int = 30) -> list[Day]:
    """One row per UTC day, oldest first, both clusters added up; days without traffic are zero."""
    today = timezone.now().date()
    first = today - timedelta(days=days - 1)
    rows = (
        UsageDay.objects.filter(tenant=tenant, day__gte=first)
        .values("day")
        .annotate(
            hits=Sum("hits"),
            misses=Sum("misses"),
            bytes_stored=Sum("bytes_stored"),
            bytes_served=Sum("bytes_served"),
        )
    )
    by_day = {r["day"]: r for r in rows}
    out = []
    for i in range(days):
        d = first + timedelta(days=i)
        r = by_day.get(d)
        out.append(Day(d, r["hits"], r["misses"], r["bytes_stored"], r["bytes_served"]) if r else Day(d))
    return out


def totals(tenant: Tenant, days: int = 7) -> Day:
    rows = daily(tenant, days)
    return Day(
        rows[-1].day,
        sum(r.hits for r in rows),
        sum(r.misses for r in rows),
        sum(r.bytes_stored for r in rows),
        sum(r.bytes_served for r in rows),
    )


def hits_chart(days: list[Day]) -> SafeString:
    return charts.bar_chart(
        "Action cache hits and misses per day",
        [d.day for d in days],
        [
            charts.Series("hits", [d.hits for d in days], "s-hit"),
            charts.Series("misses", [d.misses for d in days], "s-miss"),
        ],
    )


def bytes_chart(days: list[Day]) -> SafeString:
    return charts.bar_chart(
        "Bytes stored and served per day",
        [d.day for d in days],
        [
            charts.Series("stored", [d.bytes_stored for d in days], "s-stored"),
            charts.Series("served", [d.bytes_served for d in days], "s-served"),
        ],
        fmt=charts.human_bytes,
        axis=charts.byte_axis,
    )
