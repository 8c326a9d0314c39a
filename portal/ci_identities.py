"""Which CI runners' OIDC tokens the gRPC endpoint trusts, and as whom (reapi/jwt_auth.py)."""

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from portal import audit, tokens
from portal.models import CiIdentity, Membership, Tenant


class CiIdentityError(ValueError):
    pass


def add(
    tenant: Tenant,
    *,
    name: str,
    claim: str,
    value: str,
    user_id: int,
    scopes: str | list[str],
    actor: User | None = None,
) -> CiIdentity:
    if not settings.OIDC_GRPC_ISSUER:
        raise CiIdentityError("no issuer is configured for CI tokens (OIDC_GRPC_ISSUER)")
    claim, value = claim.strip(), value.strip()
    if not claim or not value:
        raise CiIdentityError("a claim and the value it must have are both required")
    try:
        scope_list = tokens.parse_scopes(scopes)
    except tokens.TokenError as exc:
        raise CiIdentityError(str(exc)) from None
    if not Membership.objects.filter(tenant=tenant, user_id=user_id).exists():
        raise CiIdentityError("CI runners can only act as a member of this tenant")
    try:
        with transaction.atomic():
            rule = CiIdentity.objects.create(
                tenant=tenant,
                name=name,
                issuer=settings.OIDC_GRPC_ISSUER,
                claim=claim,
                value=value,
                user_id=user_id,
                scopes=",".join(scope_list),
                created_by=actor,
            )
            audit.record("ci.trust", tenant=tenant, actor=actor, claim=claim, value=value, scopes=scope_list)
    except IntegrityError:
        raise CiIdentityError(f"{claim}={value} is already trusted in this tenant") from None
    return rule


def remove(rule: CiIdentity, actor: User | None = None) -> None:
    with transaction.atomic():
        audit.record("ci.untrust", tenant=rule.tenant, actor=actor, claim=rule.claim, value=rule.value)
        rule.delete()
