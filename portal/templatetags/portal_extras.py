from collections.abc import Iterable
from datetime import datetime, timedelta

from django import template
from django.utils import timezone

from portal.charts import human_bytes
from portal.models import AccessToken

register = template.Library()


@register.filter(name="bytes")
def bytes_filter(value: int) -> str:
    return human_bytes(int(value or 0))


@register.filter
def with_scope(tokens: Iterable[AccessToken], scope: str) -> list[AccessToken]:
    return [t for t in tokens if scope in t.scope_list]


@register.filter
def without_scope(tokens: Iterable[AccessToken], scope: str) -> list[AccessToken]:
    return [t for t in tokens if scope not in t.scope_list]


@register.filter
def ago(moment: datetime | None) -> str:
    """How long ago, as people say it: "just now", "40 s ago", "3 min ago", "2 h ago"."""
    if moment is None:
        return "–"
    seconds = max(0, int((timezone.now() - moment).total_seconds()))
    if seconds < 5:
        return "just now"
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"
    return f"{seconds // 86400} d ago"


@register.filter
def span(delta: timedelta | None) -> str:
    """A duration: "0.4 s", "12 s", "3 min 5 s"."""
    if delta is None:
        return "–"
    seconds = delta.total_seconds()
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{int(seconds) // 60} min {int(seconds) % 60} s"


@register.filter
def scope_summary(scopes: list[str]) -> str:
    """Scopes in a few words: "read, write, execute" for the REAPI pairs held whole, the
    scope's own name for half a pair or anything else."""
    held, words = set(scopes), []
    for word, pair in (("read", ("cas:read", "ac:read")), ("write", ("cas:write", "ac:write"))):
        if set(pair) <= held:
            words.append(word)
        else:
            words += [s for s in pair if s in held]
    words += [s for s in scopes if s not in {"cas:read", "ac:read", "cas:write", "ac:write"}]
    return ", ".join(words)


@register.filter
def percent(rate: float | None) -> str:
    """A share as people read it: "93%", or "–" where there was nothing to share."""
    return "–" if rate is None else f"{rate:.0%}"


@register.filter
def seconds(value: float) -> str:
    return span(timedelta(seconds=value))
