"""The credential cache: an entry lives its TTL, the cache never holds more than its bound,
and a full cache drops the entry that would expire first."""

from datetime import UTC, datetime, timedelta

import pytest

from reapi.auth import CredentialCache, Principal
from reapi.errors import Unauthenticated
from reapi.limits import Caller


def refused(n: int) -> Unauthenticated:
    return Unauthenticated(f"token {n}")


def test_an_entry_is_served_until_its_ttl_has_passed() -> None:
    cache = CredentialCache(ttl=30)
    entry = refused(1)
    cache.put("k", entry, now=100.0)
    assert cache.get("k", now=129.9) is entry
    assert cache.get("k", now=130.0) is None
    assert cache.get("other", now=100.0) is None


def test_a_full_cache_drops_its_oldest_entry_and_keeps_its_bound() -> None:
    cache = CredentialCache(ttl=30, max_entries=3)
    for n in range(5):
        cache.put(f"k{n}", refused(n), now=100.0 + n)
    assert [cache.get(f"k{n}", now=105.0) is not None for n in range(5)] == [False, False, True, True, True]
    assert len(cache._entries) == 3


def test_an_entry_put_again_lives_from_then_and_is_dropped_last() -> None:
    cache = CredentialCache(ttl=30, max_entries=2)
    cache.put("a", refused(1), now=100.0)
    cache.put("b", refused(2), now=101.0)
    cache.put("a", refused(3), now=102.0)  # a checked again: it now expires after b
    cache.put("c", refused(4), now=103.0)  # the bound drops b, the first to expire
    assert cache.get("b", now=103.0) is None
    assert str(cache.get("a", now=131.0)) == "token 3"
    assert cache.get("c", now=103.0) is not None


def _member(expires_at: datetime | None) -> Principal:
    return Principal(
        tenant="acme",
        tenant_id=1,
        cache_mode="independent",
        user_id=1,
        username="ann",
        scopes=frozenset({"cas:read"}),
        expires_at=expires_at,
        caller=Caller(key="pat:1", tenant="acme", label="token aw_pat_x…", rate=None),
    )


def test_a_cached_principal_past_its_expiry_is_refused_within_the_ttl() -> None:
    cache = CredentialCache(ttl=30)
    lasting, ended = _member(None), _member(datetime.now(UTC) - timedelta(seconds=1))
    assert cache.principal("never", lambda: lasting, lambda who: "expired", "token") is lasting
    with pytest.raises(Unauthenticated, match="expired"):
        cache.principal("ended", lambda: ended, lambda who: "expired", "token")
    # Within the cache's TTL, so no new check: the expiry kept with the entry refuses it.
    with pytest.raises(Unauthenticated, match="expired"):
        cache.principal("ended", lambda: pytest.fail("checked again"), lambda who: "expired", "token")
    assert cache.principal("never", lambda: pytest.fail("checked again"), lambda who: "x", "token") is lasting
