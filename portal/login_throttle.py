"""Throttling of password sign-ins, per account and per client address.

Failures are counted in Django's cache (PORTAL_CACHE_URL; Redis shares the counts between
portal processes) for LOGIN_LOCKOUT_SECONDS. When an account or an address reaches its limit it
is locked for LOGIN_LOCKOUT_SECONDS: the lockout is audited once, and every sign-in for it is
refused before the password is checked (the right one too), with the time to try again. Each
attempt takes its number before the password is checked, so guesses sent in parallel cannot
slip past the limit; a success gives its number back.

The account is the username as typed, case-folded (a nonexistent one is counted the same, so
a lockout says nothing about which accounts exist). The address is REMOTE_ADDR, or the last
address of PORTAL_CLIENT_IP_HEADER when a trusted proxy sets it; IPv6 addresses count per /64,
the block one subscriber usually holds.
"""

import contextlib
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from portal import audit

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Subject:
    kind: str  # "account" or "address"
    ident: str
    limit: int

    @property
    def failures_key(self) -> str:
        return f"login:failures:{self.kind}:{self.ident}"

    @property
    def lock_key(self) -> str:
        return f"login:locked:{self.kind}:{self.ident}"


@dataclass(frozen=True)
class Lockout:
    kind: str
    until: float  # seconds since the epoch

    def message(self) -> str:
        who = "for this account" if self.kind == "account" else "from your address"
        at = datetime.fromtimestamp(self.until, UTC)
        minutes = max(math.ceil((self.until - time.time()) / 60), 1)
        return (
            f"Too many failed sign-ins {who}. Try again after {at:%H:%M} UTC "
            f"(in {minutes} minute{'s' if minutes != 1 else ''})."
        )

    def retry_after(self) -> int:
        return max(math.ceil(self.until - time.time()), 1)


@dataclass(frozen=True)
class Attempt:
    username: str
    address: str
    subjects: tuple[Subject, ...]
    numbers: tuple[int, ...]


def client_address(request: HttpRequest) -> str:
    """The address a throttle counts: from the trusted proxy's header if one is configured and
    present, else the peer's; an IPv6 address stands for its /64."""
    raw = ""
    if settings.PORTAL_CLIENT_IP_META:
        # A proxy appends the address it saw: whatever comes before it came from the client.
        raw = request.META.get(settings.PORTAL_CLIENT_IP_META, "").rsplit(",", 1)[-1].strip()
    address = _parse(raw) or _parse(request.META.get("REMOTE_ADDR", ""))
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text[:64])
    except ValueError:
        return None


def _account(username: str) -> str:
    # Hashed: a bounded cache key whatever was typed.
    return hashlib.sha256(username.casefold().encode()).hexdigest()[:32]


def begin(request: HttpRequest, username: str) -> Attempt | Lockout:
    address = client_address(request)
    subjects = (
        Subject("account", _account(username), settings.LOGIN_MAX_FAILURES_PER_ACCOUNT),
        Subject("address", address, settings.LOGIN_MAX_FAILURES_PER_ADDRESS),
    )
    locks = cache.get_many([s.lock_key for s in subjects])
    for s in subjects:
        if s.lock_key in locks:
            return Lockout(s.kind, float(locks[s.lock_key]))
    numbers = tuple(_take_number(s) for s in subjects)
    attempt = Attempt(username, address, subjects, numbers)
    # More guesses in flight at once than the limit allows: refused unchecked.
    over = [s for s, n in zip(subjects, numbers, strict=True) if n > s.limit]
    return _lock(attempt, over) if over else attempt


def _take_number(subject: Subject) -> int:
    cache.add(subject.failures_key, 0, timeout=settings.LOGIN_LOCKOUT_SECONDS)
    try:
        return cache.incr(subject.failures_key)
    except ValueError:  # expired between add and incr
        cache.set(subject.failures_key, 1, timeout=settings.LOGIN_LOCKOUT_SECONDS)
        return 1


def failed(attempt: Attempt) -> Lockout | None:
    """After a wrong password: the lockout it starts, if it was the last one allowed."""
    full = [s for s, n in zip(attempt.subjects, attempt.numbers, strict=True) if n >= s.limit]
    return _lock(attempt, full) if full else None


def succeeded(attempt: Attempt) -> None:
    account, address = attempt.subjects
    cache.delete(account.failures_key)
    with contextlib.suppress(ValueError):  # ValueError: the count has expired already
        cache.decr(address.failures_key)


def _lock(attempt: Attempt, subjects: list[Subject]) -> Lockout:
    until = time.time() + settings.LOGIN_LOCKOUT_SECONDS
    lockouts = []
    for s in subjects:
        if cache.add(s.lock_key, until, timeout=settings.LOGIN_LOCKOUT_SECONDS):
            cache.delete(s.failures_key)  # counting starts afresh once the lockout ends
            _record(attempt, s, until)
            lockouts.append(Lockout(s.kind, until))
        else:  # locked meanwhile by a parallel attempt
            lockouts.append(Lockout(s.kind, float(cache.get(s.lock_key, until))))
    return max(lockouts, key=lambda lockout: lockout.until)


def _record(attempt: Attempt, subject: Subject, until: float) -> None:
    user = get_user_model().objects.filter(username=attempt.username).first()
    # A name that is no account may be a password typed in the wrong box: it is not kept.
    username = attempt.username if user is not None else ""
    stamp = datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds")
    who = attempt.address if subject.kind == "address" else repr(username or "(no such account)")
    log.warning("sign-in lockout of %s %s until %s", subject.kind, who, stamp)
    audit.record(
        "login.lockout",
        actor=user if subject.kind == "account" else None,
        kind=subject.kind,
        username=username,
        address=attempt.address,
        until=stamp,
    )


def guard(
    request: HttpRequest | None, username: str | None, password: str | None, check: Callable[[], T]
) -> T:
    """Run a sign-in form's credential check under the throttle; a lockout is a ValidationError
    (code "throttled") whose message says when to try again."""
    if request is None or not username or not password:
        return check()  # nothing would be checked: nothing to count
    attempt = begin(request, username)
    if isinstance(attempt, Lockout):
        raise ValidationError(
            attempt.message(), code="throttled", params={"retry_after": attempt.retry_after()}
        )
    try:
        result = check()
    except ValidationError:
        lockout = failed(attempt)
        if lockout is not None:
            raise ValidationError(
                lockout.message(), code="throttled", params={"retry_after": lockout.retry_after()}
            ) from None
        raise
    succeeded(attempt)
    return result
