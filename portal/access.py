"""Who may see which tenant: the one place the pages and the API ask.

A tenant someone is not a member of does not exist for them (404, never 403): an outsider
learns nothing, not even that a slug is taken. Inside a tenant, admin-only actions are 403.
Django superusers act as admins of every tenant.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet
from django.http import Http404, HttpRequest

from portal.models import AccessToken, Membership, Role, Tenant

if TYPE_CHECKING:
    from reapi.models import Invocation


@dataclass(frozen=True)
class TenantAccess:
    tenant: Tenant
    role: str
    user: User
    # False for a superuser who sees the tenant without belonging to it: an admin here, but one
    # who cannot hold its tokens until they join.
    member: bool = True

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


def signed_in(request: HttpRequest) -> User:
    """The caller of a view that required a login."""
    return cast(User, request.user)


def tenants_of(user: User | AnonymousUser) -> QuerySet[Tenant]:
    if not user.is_authenticated:
        return Tenant.objects.none()
    if getattr(user, "is_superuser", False):
        return Tenant.objects.order_by("slug")
    return Tenant.objects.filter(memberships__user=user).order_by("slug")


def access(user: User | AnonymousUser, slug: str) -> TenantAccess:
    """The caller's standing in tenant `slug`; Http404 for an outsider or an unknown slug."""
    if not user.is_authenticated:
        raise Http404("no such tenant")
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise Http404("no such tenant")
    membership = Membership.objects.filter(tenant=tenant, user=user).first()
    if membership is not None:
        role = Role.ADMIN if getattr(user, "is_superuser", False) else membership.role
        return TenantAccess(tenant, role, user)
    if getattr(user, "is_superuser", False):
        return TenantAccess(tenant, Role.ADMIN, user, member=False)
    raise Http404("no such tenant")


def visible_tokens(acc: TenantAccess) -> QuerySet[AccessToken]:
    """Admins see every token of the tenant, developers only their own."""
    tokens = AccessToken.objects.filter(tenant=acc.tenant).select_related("user")
    if not acc.is_admin:
        tokens = tokens.filter(user=acc.user)
    return tokens.order_by("-created_at")


def token_or_404(acc: TenantAccess, token_id: int) -> AccessToken:
    token = visible_tokens(acc).filter(pk=token_id).first()
    if token is None:
        raise Http404("no such token")
    return token


def visible_invocations(acc: TenantAccess) -> "QuerySet[Invocation]":
    """Admins see every invocation (build) of the tenant, developers those made with their own
    credentials; most recent first."""
    from reapi.models import Invocation  # the reapi app's model; portal.models loads first

    rows = Invocation.objects.filter(tenant=acc.tenant)
    if not acc.is_admin:
        rows = rows.filter(user_id=acc.user.pk)
    return rows.order_by("-last_call", "-id")
