"""The Members pages: the list, invitations, local accounts (where no OpenID provider is
configured), and each member's own page, where removing them is confirmed after saying what it
revokes."""

import contextlib
from collections.abc import Iterator

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from portal import forms, invitations, local_accounts, reveal
from portal.access import TenantAccess
from portal.models import AccessToken, CiIdentity, Invitation, LocalAccount, Membership
from portal.views import page, tenant_view


def _local_login() -> None:
    if settings.OIDC_ENABLED:
        raise Http404("accounts come from the sign-in provider here")


@contextlib.contextmanager
def _refusal_shown(request: HttpRequest) -> Iterator[None]:
    """A change the membership rules refuse (the last admin, oneself) is told on the next page."""
    try:
        yield
    except invitations.MembershipError as exc:
        messages.error(request, str(exc))


@tenant_view()
@require_GET
def members(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    return members_page(request, acc)


def members_page(
    request: HttpRequest,
    acc: TenantAccess,
    invite_form: forms.InviteForm | None = None,
    account_form: forms.LocalAccountForm | None = None,
    status: int = 200,
) -> HttpResponse:
    rows = list(
        Membership.objects.filter(tenant=acc.tenant).select_related("user").order_by("user__username")
    )
    made_here = set(
        LocalAccount.objects.filter(tenant=acc.tenant, user__in=[m.user for m in rows]).values_list(
            "user_id", flat=True
        )
    )
    waiting = {m.pk for m in rows if m.user_id in made_here and not m.user.has_usable_password()}
    pending = Invitation.objects.filter(tenant=acc.tenant, accepted_at__isnull=True).order_by("email")
    return page(
        request,
        acc,
        "members",
        memberships=rows,
        awaiting_password=waiting,
        pending=pending,
        invite_form=invite_form or forms.InviteForm(),
        account_form=account_form or forms.LocalAccountForm(),
        roles=forms.RoleForm.base_fields["role"].choices,  # type: ignore[attr-defined]
        oidc=settings.OIDC_ENABLED,
        status=status,
    )


@tenant_view(admin=True)
@require_POST
def member_invite(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    form = forms.InviteForm(request.POST)
    if form.is_valid():
        email, role = form.cleaned_data["email"], form.cleaned_data["role"]
        try:
            invitation, outcome = invitations.invite_once(acc.tenant, email, role, acc.user)
        except invitations.MembershipError as exc:
            form.add_error("email", str(exc))
        else:
            if outcome == "already invited":
                messages.info(request, f"{invitation.email} is already invited as {invitation.role}.")
            elif outcome == "role changed":
                messages.success(request, f"The invitation for {invitation.email} is now as {role}.")
            else:
                messages.success(request, f"Invited {invitation.email} as {role}.")
            return redirect("members", slug=acc.tenant.slug)
    return members_page(request, acc, invite_form=form, status=400)


@tenant_view(admin=True)
@require_POST
def account_create(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    _local_login()
    form = forms.LocalAccountForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            made = local_accounts.create(acc.tenant, data["username"], data["email"], data["role"], acc.user)
        except local_accounts.AccountError as exc:
            form.add_error(exc.field, str(exc))
        else:
            reveal.keep(
                request, "account", made.membership.pk, request.build_absolute_uri(made.set_password_path)
            )
            url = reverse("account_created", args=[acc.tenant.slug, made.membership.pk])
            return HttpResponseRedirect(url, status=303)
    return members_page(request, acc, account_form=form, status=400)


@tenant_view(admin=True)
@require_POST
def account_link(request: HttpRequest, acc: TenantAccess, membership_id: int) -> HttpResponse:
    _local_login()
    membership = get_object_or_404(
        Membership.objects.select_related("user"), tenant=acc.tenant, pk=membership_id
    )
    try:
        path = local_accounts.new_link(membership, acc.user)
    except local_accounts.AccountError as exc:
        messages.error(request, str(exc))
        return redirect("members", slug=acc.tenant.slug)
    reveal.keep(request, "account", membership.pk, request.build_absolute_uri(path))
    return HttpResponseRedirect(reverse("account_created", args=[acc.tenant.slug, membership.pk]), status=303)


@tenant_view(admin=True)
@require_GET
@never_cache
def account_created(request: HttpRequest, acc: TenantAccess, membership_id: int) -> HttpResponse:
    _local_login()
    membership = get_object_or_404(
        Membership.objects.select_related("user"), tenant=acc.tenant, pk=membership_id
    )
    link = reveal.take(request, "account", membership.pk)
    return page(
        request,
        acc,
        "account_created",
        membership=membership,
        link=link if isinstance(link, str) else "",
        lost=link is reveal.Gone.LOST,
        waiting=local_accounts.awaiting_password(membership),
        timeout_days=settings.PASSWORD_RESET_TIMEOUT // 86400,
    )


@tenant_view(admin=True)
@require_POST
def member_role(request: HttpRequest, acc: TenantAccess, membership_id: int) -> HttpResponse:
    membership = get_object_or_404(Membership, tenant=acc.tenant, pk=membership_id)
    form = forms.RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose admin or developer.")
    else:
        with _refusal_shown(request):
            invitations.change_role(membership, form.cleaned_data["role"], acc.user)
            messages.success(request, f"{membership.user.get_username()} is now {membership.role}.")
    return redirect("members", slug=acc.tenant.slug)


@tenant_view(admin=True)
@require_GET
def member_detail(request: HttpRequest, acc: TenantAccess, membership_id: int) -> HttpResponse:
    """A member, and what removing them would do, asked before it is done."""
    membership = get_object_or_404(
        Membership.objects.select_related("user"), tenant=acc.tenant, pk=membership_id
    )
    user = membership.user
    live = AccessToken.objects.filter(tenant=acc.tenant, user=user, revoked_at__isnull=True).order_by("name")
    return page(
        request,
        acc,
        "member_detail",
        membership=membership,
        live_tokens=live,
        ci_rules=CiIdentity.objects.filter(tenant=acc.tenant, user=user).order_by("name"),
        is_self=user.pk == acc.user.pk,
    )


@tenant_view(admin=True)
@require_POST
def member_remove(request: HttpRequest, acc: TenantAccess, membership_id: int) -> HttpResponse:
    membership = get_object_or_404(Membership, tenant=acc.tenant, pk=membership_id)
    name = membership.user.get_username()
    with _refusal_shown(request):
        invitations.remove(membership, acc.user)
        messages.success(request, f"{name} removed; their tokens in {acc.tenant.slug} are revoked.")
    return redirect("members", slug=acc.tenant.slug)


@tenant_view(admin=True)
@require_POST
def invitation_cancel(request: HttpRequest, acc: TenantAccess, invitation_id: int) -> HttpResponse:
    invitation = get_object_or_404(Invitation, tenant=acc.tenant, pk=invitation_id, accepted_at__isnull=True)
    invitations.cancel(invitation, acc.user)
    messages.success(request, f"Invitation for {invitation.email} cancelled.")
    return redirect("members", slug=acc.tenant.slug)
