"""Tenants and memberships: the operations the CLI, the pages and the API share."""

import re

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction

from portal import audit, rates
from portal.models import (
    MAX_CI_CONFIRMATIONS,
    MIN_CI_CONFIRMATIONS,
    CacheMode,
    CiAccepts,
    Membership,
    Role,
    Tenant,
)
from reapi import digests


class TenancyError(ValueError):
    pass


def get_tenant(slug: str) -> Tenant:
    try:
        return Tenant.objects.get(slug=slug)
    except Tenant.DoesNotExist:
        raise TenancyError(f"no tenant {slug!r}") from None


def check_mode(mode: str) -> CacheMode:
    try:
        return CacheMode(mode)
    except ValueError:
        choices = ", ".join(CacheMode.values)
        raise TenancyError(f"unknown cache mode {mode!r} (choose {choices})") from None


# The one slug rule, for the command line, the dashboard's form and anything else that makes a
# tenant: a DNS label (it doubles as the REAPI instance name and may end up in host names).
SLUG_MAX = 63
SLUG_RULE = "1 to 63 lowercase letters, digits and hyphens, starting and ending with a letter or digit"
_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def check_slug(slug: str) -> str:
    if not _SLUG.fullmatch(slug):
        shown = slug if len(slug) <= 80 else slug[:80] + "…"
        raise TenancyError(f"{shown!r} is not a valid slug: {SLUG_RULE}")
    if slug in RESERVED_SLUGS:
        raise TenancyError(f"{slug!r} is reserved by the REAPI resource-name grammar")
    return slug


def create_tenant(slug: str, mode: str = CacheMode.INDEPENDENT, actor: User | None = None) -> Tenant:
    check_slug(slug)
    with transaction.atomic():
        if Tenant.objects.filter(slug=slug).exists():
            raise TenancyError(f"tenant {slug!r} already exists")
        tenant = Tenant.objects.create(slug=slug, name=slug, cache_mode=check_mode(mode))
        audit.record("tenant.create", tenant=tenant, actor=actor, mode=tenant.cache_mode)
    return tenant


def set_cache_mode(tenant: Tenant, mode: str, actor: User | None = None) -> Tenant:
    new_mode = check_mode(mode)
    old_mode = tenant.cache_mode
    if old_mode != new_mode:
        with transaction.atomic():
            tenant.cache_mode = new_mode
            tenant.save(update_fields=["cache_mode"])
            audit.record("tenant.mode", tenant=tenant, actor=actor, old=old_mode, new=new_mode)
    return tenant


def set_token_rate(tenant: Tenant, rate: rates.Rate | None, actor: User | None = None) -> Tenant:
    """The calls per second each credential of the tenant may make on a server process; None
    for the server's REAPI_TOKEN_RATE. Running servers apply it as they refresh a credential
    (REAPI_CREDENTIAL_TTL_SECONDS)."""
    old = tenant.token_rate
    if old != rate:
        with transaction.atomic():
            tenant.token_rate_per_second = rate.per_second if rate else None
            tenant.token_rate_burst = rate.burst if rate else None
            tenant.save(update_fields=["token_rate_per_second", "token_rate_burst"])
            audit.record(
                "tenant.rate",
                tenant=tenant,
                actor=actor,
                old=str(old or rates.DEFAULT),
                new=str(rate or rates.DEFAULT),
            )
    return tenant


def set_ci_accepts(
    tenant: Tenant, accepts: str, confirmations: int | None = None, actor: User | None = None
) -> Tenant:
    """What the tenant's CI takes from workstations' results (README "What CI accepts from
    workstations"); `confirmations`: the distinct users `confirmed` needs (unchanged if None).
    Running servers follow within REAPI_CREDENTIAL_TTL_SECONDS; nothing in storage moves."""
    try:
        new = CiAccepts(accepts)
    except ValueError:
        choices = ", ".join(CiAccepts.values)
        raise TenancyError(f"unknown setting {accepts!r} for what CI accepts (choose {choices})") from None
    count = tenant.ci_confirmations if confirmations is None else confirmations
    if not MIN_CI_CONFIRMATIONS <= count <= MAX_CI_CONFIRMATIONS:
        raise TenancyError(
            f"confirmations must be {MIN_CI_CONFIRMATIONS} to {MAX_CI_CONFIRMATIONS} distinct users, not {count}"
        )
    old, old_count = tenant.ci_accepts, tenant.ci_confirmations
    if (old, old_count) != (new, count):
        with transaction.atomic():
            tenant.ci_accepts, tenant.ci_confirmations = new, count
            tenant.save(update_fields=["ci_accepts", "ci_confirmations"])
            audit.record(
                "tenant.ci_accepts",
                tenant=tenant,
                actor=actor,
                old=old,
                new=str(new),
                old_confirmations=old_count,
                confirmations=count,
            )
    return tenant


def describe_ci_accepts(tenant: Tenant) -> str:
    """e.g. `none`, or `confirmed (by CI or 2 users)`."""
    if tenant.ci_accepts == CiAccepts.CONFIRMED:
        return f"confirmed (by CI or {tenant.ci_confirmations} users)"
    return str(tenant.ci_accepts)


def add_member(
    tenant: Tenant, username: str, role: str = Role.DEVELOPER, actor: User | None = None
) -> Membership:
    if role not in Role.values:
        raise TenancyError(f"unknown role {role!r} (choose {', '.join(Role.values)})")
    user_model = get_user_model()
    with transaction.atomic():
        user, _ = user_model.objects.get_or_create(username=username)
        membership, created = Membership.objects.get_or_create(
            tenant=tenant, user=user, defaults={"role": role}
        )
        if not created and membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
        audit.record("member.add", tenant=tenant, actor=actor, username=username, role=role)
    return membership


# A tenant slug doubles as the REAPI instance name, so it may not be one of the
# reserved resource-name segments (REAPI v2, ByteStream resource names); slugs are lowercase.
RESERVED_SLUGS = frozenset(segment.lower() for segment in digests.RESERVED)
