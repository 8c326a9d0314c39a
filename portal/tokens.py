"""Issuing, revoking and listing personal access tokens."""

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from portal import audit, pats
from portal.models import SCOPES, AccessToken, Membership, Tenant

ALL_SCOPES = ",".join(SCOPES)


class TokenError(ValueError):
    pass


@dataclass(frozen=True)
class IssuedToken:
    token: AccessToken
    secret: str  # shown once, never stored


def parse_scopes(text: str | list[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = [s.strip() for s in items if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise TokenError(f"unknown scope(s) {', '.join(unknown)} (choose from {', '.join(SCOPES)})")
    if not scopes:
        raise TokenError("a token needs at least one scope")
    # Stored in the contract order so the same set always reads the same.
    return [s for s in SCOPES if s in scopes]


def issue(
    tenant: Tenant,
    username: str,
    *,
    name: str = "",
    scopes: str | list[str] = ALL_SCOPES,
    expires_in_days: int | None = None,
    actor: User | None = None,
) -> IssuedToken:
    scope_list = parse_scopes(scopes)
    if expires_in_days is None:
        expires_in_days = settings.TOKEN_DEFAULT_EXPIRY_DAYS
    if expires_in_days < 0:
        raise TokenError("--expires-in must be a positive number of days")
    if expires_in_days == 0 and not tenant.allow_non_expiring_tokens:
        raise TokenError(f"tenant {tenant.slug!r} does not allow tokens that never expire")
    try:
        user = get_user_model().objects.get(username=username)
    except get_user_model().DoesNotExist:
        raise TokenError(f"no user {username!r}") from None
    if not Membership.objects.filter(tenant=tenant, user=user).exists():
        raise TokenError(f"user {username!r} is not a member of tenant {tenant.slug!r}")
    secret = pats.generate()
    now = timezone.now()
    with transaction.atomic():
        token = AccessToken.objects.create(
            tenant=tenant,
            user=user,
            name=name,
            prefix=pats.display_prefix(secret),
            digest=pats.digest(secret),
            scopes=",".join(scope_list),
            created_at=now,
            expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
        )
        audit.record(
            "token.issue",
            tenant=tenant,
            actor=actor,
            token_prefix=token.prefix,
            owner=username,
            scopes=scope_list,
        )
    return IssuedToken(token=token, secret=secret)


def find(pat_or_id: str) -> AccessToken:
    """A token by its full PAT or its numeric id."""
    try:
        if pat_or_id.isdigit():
            return AccessToken.objects.select_related("tenant", "user").get(pk=int(pat_or_id))
        pats.check_format(pat_or_id)
        return AccessToken.objects.select_related("tenant", "user").get(digest=pats.digest(pat_or_id))
    except pats.MalformedToken as exc:
        raise TokenError(str(exc)) from None
    except AccessToken.DoesNotExist:
        raise TokenError("no such token") from None


def revoke(token: AccessToken, actor: User | None = None) -> AccessToken:
    if token.revoked_at is None:
        with transaction.atomic():
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            audit.record("token.revoke", tenant=token.tenant, actor=actor, token_prefix=token.prefix)
    return token
