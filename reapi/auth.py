"""Who is calling: credentials from gRPC metadata checked against the portal's database.

The request path (docs/architecture.md): `x-aspect: aw_pat_…` or `authorization: Bearer <PAT>`. A PAT is checked
for format and checksum before any lookup (a typo or random string costs no query), then found
by its SHA-256. Validated credentials are cached for REAPI_CREDENTIAL_TTL_SECONDS, which bounds
how late a revocation, an expiry, a cache-mode or a rate-limit change reaches a running server.
"""

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from portal import audit, pats
from portal.models import SCOPES, AccessToken, Tenant
from reapi import ac_entries
from reapi.errors import PermissionDenied, Unauthenticated, Unavailable
from reapi.limits import Caller

log = logging.getLogger(__name__)

LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    tenant_id: int
    cache_mode: str
    user_id: int
    username: str
    scopes: frozenset[str]
    expires_at: datetime | None
    caller: Caller  # the credential as reapi/limits.py counts it, with the tenant's rate
    token_id: int | None = None
    token_prefix: str = ""
    # What the tenant's CI takes from workstations' results (portal.models.CiAccepts), carried
    # like the cache mode so a change reaches running servers within the credential TTL.
    ci_accepts: str = "all"
    ci_confirmations: int = 2

    def ci_threshold(self, cluster: str) -> int:
        """How many distinct workstation users must have written a result before a reader on
        `cluster` is served it (reapi.ac_entries.accepted): 0 takes every result."""
        if cluster != "internal" or self.ci_accepts == "all":
            return 0
        if self.ci_accepts == "confirmed":
            return self.ci_confirmations
        return ac_entries.NEVER

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise PermissionDenied(f"the credential lacks the {scope} scope")

    def check_instance(self, instance_name: str) -> None:
        # The tenant comes from the credential; the instance name may only repeat it.
        if instance_name not in ("", self.tenant):
            raise PermissionDenied(f"instance name {instance_name[:100]!r} is not this credential's tenant")


class CredentialCache:
    """Checked credentials for `ttl` seconds, at most `max_entries` of them.

    Every entry lives the same `ttl`, so the dict's insertion order is also the order of
    expiry: a full cache drops its oldest entry, in constant time, and a read is one lock-free
    dict lookup (the hot path of every call).
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        # key -> (monotonic deadline, what the check found, its expiry as a POSIX time or inf)
        self._entries: dict[str, tuple[float, Principal | Unauthenticated, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> Principal | Unauthenticated | None:
        entry = self._live(key, now)
        return entry[1] if entry is not None else None

    def _live(self, key: str, now: float) -> tuple[float, Principal | Unauthenticated, float] | None:
        entry = self._entries.get(key)
        return entry if entry is not None and entry[0] > now else None

    def principal(
        self,
        key: str,
        check: Callable[[], Principal | Unauthenticated],
        expired: Callable[[Principal], str],
        store: str,
    ) -> Principal:
        """The principal cached under `key`, or the one `check` finds (a refusal it returns is
        cached too; one it raises is not); Unauthenticated with `expired(principal)` past its
        expiry, Unavailable when `store` (the database holding credentials) fails."""
        now = time.monotonic()
        entry = self._live(key, now)
        if entry is None:
            try:
                found = check()
            except DatabaseError:
                log.exception("%s lookup failed", store)
                raise Unavailable("the credential store is unreachable; retry shortly") from None
            entry = self.put(key, found, now)
        _deadline, cached, expires = entry
        if isinstance(cached, Unauthenticated):
            raise cached
        # The expiry kept as a POSIX time: one comparison with time.time(), where
        # timezone.now() and a datetime comparison are Python code on every call.
        if expires <= time.time():
            raise Unauthenticated(expired(cached))
        return cached

    def put(
        self, key: str, value: Principal | Unauthenticated, now: float
    ) -> tuple[float, Principal | Unauthenticated, float]:
        expires_at = value.expires_at if isinstance(value, Principal) else None
        entry = (now + self.ttl, value, math.inf if expires_at is None else expires_at.timestamp())
        with self._lock:
            self._entries.pop(key, None)  # put back at the end, where its expiry now belongs
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = entry
        return entry


_cache = CredentialCache(settings.REAPI_CREDENTIAL_TTL_SECONDS)


def credential_from_metadata(metadata: tuple[tuple[str, str | bytes], ...]) -> str:
    for key, value in metadata:
        if key == "x-aspect" and isinstance(value, str):
            return value.strip()
        if key == "authorization" and isinstance(value, str):
            scheme, _, rest = value.strip().partition(" ")
            if scheme.lower() != "bearer" or not rest.strip():
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return rest.strip()
    raise Unauthenticated(
        "no credential: send x-aspect: aw_pat_… (bazel --remote_header=X-Aspect=…) or authorization: Bearer …"
    )


def authenticate(metadata: tuple[tuple[str, str | bytes], ...]) -> Principal:
    credential = credential_from_metadata(metadata)
    if not credential.startswith(pats.PREFIX):
        from reapi import jwt_auth  # imported here: it builds on this module

        if jwt_auth.looks_like_jwt(credential):
            return jwt_auth.authenticate(credential)
        raise Unauthenticated("credential is not a personal access token (aw_pat_…) or an OIDC JWT")

    def check() -> Principal | Unauthenticated:
        # Only a credential not seen within the TTL is checked for its format and checksum (a
        # malformed one is refused, not cached, so a cached one passed them).
        try:
            pats.check_format(credential)
        except pats.MalformedToken as exc:
            raise Unauthenticated(str(exc)) from None
        return _lookup(pats.digest(credential))

    return _cache.principal(
        pats.digest(credential),
        check,
        lambda who: f"personal access token {who.token_prefix}… has expired",
        "token",
    )


def _lookup(digest: str) -> Principal | Unauthenticated:
    close_old_connections()
    token = AccessToken.objects.select_related("tenant", "user").filter(digest=digest).first()
    if token is None:
        return Unauthenticated("unknown personal access token")
    if token.revoked_at is not None:
        return Unauthenticated(f"personal access token {token.prefix}… has been revoked")
    if not token.user.is_active:
        return Unauthenticated(f"the owner of token {token.prefix}… is deactivated")
    _note_use(token)
    return member_principal(
        token.tenant,
        token.user,
        # The REAPI scopes only: portal:admin opens the portal's REST API and grants nothing here.
        frozenset(s for s in token.scope_list if s in SCOPES),
        token.expires_at,
        bucket=f"pat:{token.id}",
        label=f"token {token.prefix}…",
        token_id=token.id,
        token_prefix=token.prefix,
    )


def member_principal(
    tenant: Tenant,
    user: User,
    scopes: frozenset[str],
    expires_at: datetime | None,
    bucket: str,
    label: str,
    token_id: int | None = None,
    token_prefix: str = "",
) -> Principal:
    """A tenant member's principal, with what the tenant sets for it read now (cache mode,
    rate, what its CI accepts): it reaches running servers with the credential cache's TTL.
    `bucket`: the rate limit's key (reapi.limits.Caller); `label`: how messages name it."""
    return Principal(
        tenant=tenant.slug,
        tenant_id=tenant.pk,
        cache_mode=tenant.cache_mode,
        user_id=user.pk,
        username=user.get_username(),
        scopes=scopes,
        expires_at=expires_at,
        caller=Caller(key=bucket, tenant=tenant.slug, label=label, rate=tenant.token_rate),
        token_id=token_id,
        token_prefix=token_prefix,
        ci_accepts=tenant.ci_accepts,
        ci_confirmations=tenant.ci_confirmations,
    )


def _note_use(token: AccessToken) -> None:
    """Write last-used at most once a minute, and audit the first use."""
    now = timezone.now()
    if token.last_used_at and now - token.last_used_at < LAST_USED_RESOLUTION:
        return
    first = token.first_used_at is None
    updated = AccessToken.objects.filter(pk=token.pk)
    if first:
        # Only the process that wins this update records the first use.
        if updated.filter(first_used_at__isnull=True).update(first_used_at=now, last_used_at=now):
            audit.record("token.first_use", tenant=token.tenant, token_prefix=token.prefix)
    else:
        updated.update(last_used_at=now)
