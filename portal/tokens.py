"""Issuing, revoking and listing personal access tokens."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from portal import audit, pats
from portal.models import (
    ADMIN_SCOPE,
    DEFAULT_SCOPES,
    SCOPES,
    TOKEN_SCOPES,
    AccessToken,
    Membership,
    Role,
    Tenant,
)

# The default set of every way to issue a token: the REAPI scopes, never portal:admin.
ALL_SCOPES = ",".join(DEFAULT_SCOPES)
# The longest expiry one may ask for (0 is "never", where the tenant allows it).
MAX_EXPIRY_DAYS = 3650


class TokenError(ValueError):
    pass


class TokenRefused(TokenError):
    """The request is well formed but the caller may not have this token (the API's 403)."""


class NameTaken(TokenError):
    """The owner has an active token of that name in the tenant already."""


@dataclass(frozen=True)
class IssuedToken:
    token: AccessToken
    secret: str  # shown once, never stored


def parse_scopes(text: str | list[str], allowed: tuple[str, ...] = SCOPES) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = [s.strip() for s in items if s.strip()]
    unknown = [s for s in scopes if s not in allowed]
    if unknown:
        raise TokenError(f"unknown scope(s) {', '.join(unknown)} (choose from {', '.join(allowed)})")
    if not scopes:
        raise TokenError("a token needs at least one scope")
    # Stored in the contract order so the same set always reads the same.
    return [s for s in allowed if s in scopes]


def issue(
    tenant: Tenant,
    username: str,
    *,
    name: str = "",
    scopes: str | list[str] = ALL_SCOPES,
    expires_in_days: int | None = None,
    actor: User | None = None,
    issued_by: AccessToken | None = None,
    unique_name: bool = False,
) -> IssuedToken:
    """`issued_by`: the token that asks for this one (the REST API); the new token may have
    none of the scopes it lacks and may not outlive it. Without `expires_in_days` it gets the
    default expiry, cut to the issuing token's own. `unique_name`: refuse a name the owner's
    active tokens in the tenant already have (the pages and the API; the command line warns)."""
    scope_list = parse_scopes(scopes, TOKEN_SCOPES)
    default_expiry = expires_in_days is None
    if expires_in_days is None:
        expires_in_days = settings.TOKEN_DEFAULT_EXPIRY_DAYS
    if expires_in_days < 0:
        raise TokenError("--expires-in must be a positive number of days")
    if expires_in_days > MAX_EXPIRY_DAYS:
        raise TokenError(f"a token expires in at most {MAX_EXPIRY_DAYS} days")
    if expires_in_days == 0 and not tenant.allow_non_expiring_tokens:
        raise TokenError(f"tenant {tenant.slug!r} does not allow tokens that never expire")
    now = timezone.now()
    expires_at = now + timedelta(days=expires_in_days) if expires_in_days else None
    if issued_by is not None:
        if default_expiry and issued_by.expires_at is not None and expires_at is not None:
            expires_at = min(expires_at, issued_by.expires_at)
        check_within(issued_by, scope_list, expires_at, now)
    try:
        user = get_user_model().objects.get(username=username)
    except get_user_model().DoesNotExist:
        raise TokenError(f"no user {username!r}") from None
    membership = Membership.objects.filter(tenant=tenant, user=user).first()
    if membership is None:
        raise TokenError(f"user {username!r} is not a member of tenant {tenant.slug!r}")
    if ADMIN_SCOPE in scope_list and membership.role != Role.ADMIN and not user.is_superuser:
        raise TokenRefused(f"only the tenant's admins may hold {ADMIN_SCOPE} tokens")
    if unique_name:
        clash = active_named(tenant, user, name)
        if clash is not None:
            raise NameTaken(name_clash(clash))
    secret = pats.generate()
    with transaction.atomic():
        token = AccessToken.objects.create(
            tenant=tenant,
            user=user,
            name=name,
            prefix=pats.display_prefix(secret),
            digest=pats.digest(secret),
            scopes=",".join(scope_list),
            created_at=now,
            expires_at=expires_at,
        )
        audit.record(
            "token.issue",
            tenant=tenant,
            actor=actor,
            token_prefix=token.prefix,
            name=name,
            owner=username,
            scopes=scope_list,
            expires=f"{expires_at:%Y-%m-%d}" if expires_at else "never",
        )
    return IssuedToken(token=token, secret=secret)


def active_of(tenant: Tenant, user: User) -> list[AccessToken]:
    """The user's tokens in the tenant that work now, newest first."""
    now = timezone.now()
    return list(
        AccessToken.objects.filter(tenant=tenant, user=user, revoked_at__isnull=True)
        .exclude(expires_at__lte=now)
        .order_by("-created_at")
    )


def active_named(tenant: Tenant, user: User, name: str) -> AccessToken | None:
    """The owner's active token in the tenant with this name (case and spaces aside), if any."""
    if not name.strip():
        return None
    now = timezone.now()
    return (
        AccessToken.objects.filter(
            tenant=tenant, user=user, name__iexact=name.strip(), revoked_at__isnull=True
        )
        .exclude(expires_at__lte=now)
        .order_by("-created_at")
        .first()
    )


def name_clash(token: AccessToken) -> str:
    return (
        f"{token.user.get_username()} already has an active token named {token.name!r} "
        f"({token.prefix}…, created {token.created_at:%Y-%m-%d}): choose another name, or revoke that one first"
    )


def check_within(parent: AccessToken, scopes: list[str], expires_at: datetime | None, now: datetime) -> None:
    """A token never mints a token with more power or a longer life than its own."""
    missing = [s for s in scopes if s not in parent.scope_list]
    if missing:
        raise TokenRefused(
            f"token {parent.prefix}… cannot issue a token with scope(s) it lacks: {', '.join(missing)}"
        )
    if parent.expires_at is None or (expires_at is not None and expires_at <= parent.expires_at):
        return
    days_left = (parent.expires_at - now) // timedelta(days=1)
    ask = f"ask for at most {days_left} day(s)" if days_left > 0 else "it expires within a day"
    raise TokenRefused(
        f"the new token would outlive token {parent.prefix}…, which expires "
        f"{parent.expires_at:%Y-%m-%d %H:%M} UTC: {ask}"
    )


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
    revoke_once(token, actor)
    return token


def revoke_once(token: AccessToken, actor: User | None = None) -> bool:
    """Revoke the token; False when it was revoked already (by anyone, even a moment ago), and
    then nothing changes and nothing is audited again."""
    now = timezone.now()
    with transaction.atomic():
        changed = AccessToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
        if changed:
            audit.record(
                "token.revoke", tenant=token.tenant, actor=actor, token_prefix=token.prefix, name=token.name
            )
    token.refresh_from_db(fields=["revoked_at"])
    return bool(changed)
