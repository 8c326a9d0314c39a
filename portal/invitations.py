"""Membership by admin invitation (the choice this portal makes; README "Membership").

An admin invites an email address with a role. The invitation is accepted at the next login
whose email matches: for OpenID Connect only a verified email (`email_verified: true`), for
local accounts the email a superuser set on the account. Nobody joins a tenant by a claim
alone, so a group renamed at the provider never grants or removes access silently.
"""

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from portal import audit
from portal.models import AccessToken, CiIdentity, Invitation, LocalAccount, Membership, Role, Tenant


class MembershipError(ValueError):
    pass


def invite(tenant: Tenant, email: str, role: str, actor: User | None = None) -> Invitation:
    return invite_once(tenant, email, role, actor)[0]


def invite_once(tenant: Tenant, email: str, role: str, actor: User | None = None) -> tuple[Invitation, str]:
    """Invite `email`; the second item says what changed: "invited", "role changed" or
    "already invited" (the same address with the same role: nothing new, nothing audited)."""
    email = email.strip().lower()
    if role not in Role.values:
        raise MembershipError(f"unknown role {role!r} (choose {', '.join(Role.values)})")
    if not email or "@" not in email:
        raise MembershipError(f"{email!r} is not an email address")
    if Membership.objects.filter(tenant=tenant, user__email__iexact=email).exists():
        raise MembershipError(f"{email} is already a member of {tenant.slug}")
    with transaction.atomic():
        invitation, created = Invitation.objects.get_or_create(
            tenant=tenant, email=email, accepted_at=None, defaults={"role": role, "invited_by": actor}
        )
        if created:
            outcome = "invited"
            audit.record("member.invite", tenant=tenant, actor=actor, email=email, role=role)
        elif invitation.role != role:
            outcome, old = "role changed", invitation.role
            invitation.role = role
            invitation.save(update_fields=["role"])
            audit.record("member.invite", tenant=tenant, actor=actor, email=email, role=role, old=old)
        else:
            outcome = "already invited"
    return invitation, outcome


def cancel(invitation: Invitation, actor: User | None = None) -> None:
    with transaction.atomic():
        audit.record("member.uninvite", tenant=invitation.tenant, actor=actor, email=invitation.email)
        invitation.delete()


def accept_pending(user: User, email: str) -> list[Membership]:
    """Turn the pending invitations for `email` (already known to be the user's) into memberships.

    An account a tenant admin made (LocalAccount) has an email nobody verified: it accepts
    invitations of that tenant only, or an admin of one tenant could make an account with
    someone else's address and collect the invitations other tenants send it."""
    joined: list[Membership] = []
    if not email:
        return joined
    pending = Invitation.objects.select_related("tenant").filter(
        email__iexact=email, accepted_at__isnull=True
    )
    made_by_admin = LocalAccount.objects.filter(user=user).first()
    if made_by_admin is not None:
        # Its tenant gone, the account accepts none.
        pending = pending.filter(tenant_id=made_by_admin.tenant_id or 0)
    with transaction.atomic():
        for inv in pending:
            membership, created = Membership.objects.get_or_create(
                tenant=inv.tenant, user=user, defaults={"role": inv.role}
            )
            inv.accepted_at = timezone.now()
            inv.accepted_by = user
            inv.save(update_fields=["accepted_at", "accepted_by"])
            if created:
                audit.record("member.join", tenant=inv.tenant, actor=user, email=email, role=inv.role)
                joined.append(membership)
    return joined


def _other_admins(membership: Membership) -> bool:
    return (
        Membership.objects.filter(tenant=membership.tenant, role=Role.ADMIN)
        .exclude(pk=membership.pk)
        .exists()
    )


def change_role(membership: Membership, role: str, actor: User | None = None) -> Membership:
    if role not in Role.values:
        raise MembershipError(f"unknown role {role!r} (choose {', '.join(Role.values)})")
    if membership.role == role:
        return membership
    if membership.role == Role.ADMIN and not _other_admins(membership):
        raise MembershipError("a tenant keeps at least one admin: promote someone else first")
    with transaction.atomic():
        old = membership.role
        membership.role = role
        membership.save(update_fields=["role"])
        audit.record(
            "member.role",
            tenant=membership.tenant,
            actor=actor,
            username=membership.user.get_username(),
            old=old,
            new=role,
        )
    return membership


def remove(membership: Membership, actor: User | None = None) -> None:
    """Remove a member and revoke their tokens in that tenant: a PAT outlives no membership."""
    if membership.role == Role.ADMIN and not _other_admins(membership):
        raise MembershipError("a tenant keeps at least one admin: promote someone else first")
    with transaction.atomic():
        now = timezone.now()
        revoked = list(
            AccessToken.objects.filter(
                tenant=membership.tenant, user=membership.user, revoked_at__isnull=True
            ).values_list("prefix", "name")
        )
        AccessToken.objects.filter(
            tenant=membership.tenant, user=membership.user, revoked_at__isnull=True
        ).update(revoked_at=now)
        username = membership.user.get_username()
        for prefix, name in revoked:
            audit.record(
                "token.revoke",
                tenant=membership.tenant,
                actor=actor,
                token_prefix=prefix,
                name=name,
                reason=f"{username} removed",
            )
        rules, _ = CiIdentity.objects.filter(tenant=membership.tenant, user=membership.user).delete()
        audit.record(
            "member.remove",
            tenant=membership.tenant,
            actor=actor,
            username=username,
            tokens_revoked=len(revoked),
            ci_rules_removed=rules,
        )
        membership.delete()
