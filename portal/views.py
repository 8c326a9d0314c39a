"""The portal's pages. Each view: who may (portal/access.py), what changes (the services in
portal/tenancy.py, tokens.py, invitations.py, ci_identities.py), and which template shows it.
Tokens, members, and the audit and usage pages have modules of their own (token_views.py,
member_views.py, report_views.py)."""

import functools
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portal import audit, bazelrc, ci_identities, forms, invitations, tenancy, tokens, usage
from portal.access import TenantAccess, access, signed_in, tenants_of, visible_invocations, visible_tokens
from portal.models import CiIdentity, Membership
from reapi.models import ResultConflict

TenantView = Callable[..., HttpResponseBase]


def tenant_view(admin: bool = False) -> Callable[[TenantView], TenantView]:
    """Log-in required, tenant from the URL resolved against the caller (404 for outsiders),
    and for admin views 403 for developers."""

    def decorate(view: TenantView) -> TenantView:
        @login_required
        @functools.wraps(view)
        def wrapper(request: HttpRequest, slug: str, *args: Any, **kwargs: Any) -> HttpResponseBase:
            acc = access(request.user, slug)
            if admin and not acc.is_admin:
                raise PermissionDenied("only the tenant's admins may do this")
            return view(request, acc, *args, **kwargs)

        return wrapper

    return decorate


def page(request: HttpRequest, acc: TenantAccess | None, template: str, **context: Any) -> HttpResponse:
    status = context.pop("status", 200)
    if acc is not None:
        context.update(acc=acc, tenant=acc.tenant)
    return render(request, f"portal/{template}.html", context, status=status)


# --- Log-in -------------------------------------------------------------------------------------


class LoginView(auth_views.LoginView):
    """Local password login where no OpenID provider is configured; otherwise the provider's button."""

    template_name = "portal/login.html"
    redirect_authenticated_user = True
    authentication_form = forms.LoginForm

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context.update(oidc=settings.OIDC_ENABLED, provider=settings.OIDC_OP_NAME)
        return context

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if settings.OIDC_ENABLED:
            return page(request, None, "login_failed", message="Sign in with the provider.", status=405)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        throttled = [e for e in form.non_field_errors().as_data() if e.code == "throttled"]
        if throttled:
            # RFC 6585 section 4: 429 Too Many Requests, with when to come back (RFC 9110 10.2.3).
            response.status_code = 429
            response["Retry-After"] = str(throttled[0].params["retry_after"])
        return response

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        user = form.get_user()
        invitations.accept_pending(user, user.email)
        audit.record("login", actor=user, method="password")
        return response


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    from django.contrib.auth import logout

    logout(request)
    return redirect("login")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    message = (
        "This form has expired or did not come from this site (CSRF check failed). "
        "Go back, reload the page and try again."
    )
    return page(request, None, "login_failed", message=message, title="Request refused", status=403)


# --- Tenants ------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def dashboard(request: HttpRequest) -> HttpResponse:
    tenants = list(tenants_of(request.user))
    form = forms.TenantCreateForm(request.POST or None)
    if request.method == "POST":
        if not request.user.is_superuser:
            raise PermissionDenied("only superusers create tenants")
        if form.is_valid():
            try:
                tenant = tenancy.create_tenant(form.cleaned_data["slug"], actor=signed_in(request))
            except tenancy.TenancyError as exc:
                form.add_error("slug", str(exc))
            else:
                tenancy.add_member(tenant, request.user.get_username(), "admin", actor=signed_in(request))
                messages.success(request, f"Tenant {tenant.slug} created.")
                return redirect("tenant", slug=tenant.slug)
    elif len(tenants) == 1 and not request.user.is_superuser:
        return redirect("tenant", slug=tenants[0].slug)
    return page(request, None, "dashboard", tenants=tenants, form=form)


@tenant_view()
@require_GET
def tenant_home(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    mine = visible_tokens(acc).filter(user=acc.user)
    active = [t for t in mine if t.status() == "active"]
    snippet = bazelrc.render(bazelrc.Options(tenant=acc.tenant.slug))
    return page(
        request,
        acc,
        "tenant",
        active_tokens=len(active),
        members=Membership.objects.filter(tenant=acc.tenant).count(),
        totals=usage.totals(acc.tenant, days=7),
        latest=visible_invocations(acc)[:5],
        snippet=snippet,
        urls=settings.REAPI_URLS,
    )


@tenant_view(admin=True)
@require_http_methods(["GET", "POST"])
def cache_mode(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    tenant = acc.tenant
    # Two forms on one page: a POST carries the fields of the one submitted.
    accepts_posted = request.method == "POST" and "ci_accepts" in request.POST
    mode_posted = request.method == "POST" and not accepts_posted
    form = forms.CacheModeForm(
        request.POST if mode_posted else None, initial={"cache_mode": tenant.cache_mode}
    )
    accepts_form = forms.CiAcceptsForm(
        request.POST if accepts_posted else None,
        initial={"ci_accepts": tenant.ci_accepts, "ci_confirmations": tenant.ci_confirmations},
    )
    if mode_posted and form.is_valid():
        tenancy.set_cache_mode(tenant, form.cleaned_data["cache_mode"], actor=acc.user)
        messages.success(
            request,
            f"Cache mode is now {tenant.cache_mode}; running REAPI servers follow within seconds.",
        )
        return redirect("cache_mode", slug=tenant.slug)
    if accepts_posted and accepts_form.is_valid():
        data = accepts_form.cleaned_data
        tenancy.set_ci_accepts(tenant, data["ci_accepts"], data["ci_confirmations"], actor=acc.user)
        messages.success(
            request,
            f"CI now accepts {tenancy.describe_ci_accepts(tenant)} from workstations; running REAPI "
            "servers follow within seconds.",
        )
        return redirect("cache_mode", slug=tenant.slug)
    return page(
        request,
        acc,
        "cache_mode",
        form=form,
        accepts_form=accepts_form,
        conflicts=[_conflict_rows(c) for c in ResultConflict.objects.filter(tenant=tenant)[:50]],
    )


def _conflict_rows(conflict: ResultConflict) -> dict[str, Any]:
    """A conflict as the Cache mode page lists it: the outputs that differ, side by side."""
    theirs = conflict.workstation_outputs.get("outputs", {})
    ours = conflict.ci_outputs.get("outputs", {})
    differing = [
        (path, theirs.get(path, "absent"), ours.get(path, "absent"))
        for path in sorted(set(theirs) | set(ours))
        if theirs.get(path) != ours.get(path)
    ]
    their_exit, our_exit = conflict.workstation_outputs.get("exit_code"), conflict.ci_outputs.get("exit_code")
    if their_exit != our_exit:
        differing.insert(0, ("exit code", str(their_exit), str(our_exit)))
    return {"c": conflict, "differing": differing}


# --- CI runners (OIDC on gRPC) ---------------------------------------------------------------


def _member_choices(acc: TenantAccess) -> list[tuple[int, str]]:
    rows = Membership.objects.filter(tenant=acc.tenant).select_related("user").order_by("user__username")
    return [(m.user_id, m.user.get_username()) for m in rows]


@tenant_view(admin=True)
@require_http_methods(["GET", "POST"])
def ci(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    form = forms.CiIdentityForm(request.POST or None, members=_member_choices(acc))
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            ci_identities.add(
                acc.tenant,
                name=data["name"],
                claim=data["claim"],
                value=data["value"],
                user_id=int(data["member"]),
                scopes=data["scopes"],
                actor=acc.user,
            )
        except ci_identities.CiIdentityError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"CI runners with {data['claim']}={data['value']} are trusted.")
            return redirect("ci", slug=acc.tenant.slug)
    return page(
        request,
        acc,
        "ci",
        form=form,
        rules=CiIdentity.objects.filter(tenant=acc.tenant).select_related("user").order_by("name"),
        issuer=settings.OIDC_GRPC_ISSUER,
        audience=settings.OIDC_GRPC_AUDIENCE,
        urls=settings.REAPI_URLS,
        status=400 if request.method == "POST" else 200,
    )


@tenant_view(admin=True)
@require_POST
def ci_remove(request: HttpRequest, acc: TenantAccess, rule_id: int) -> HttpResponse:
    rule = get_object_or_404(CiIdentity, tenant=acc.tenant, pk=rule_id)
    ci_identities.remove(rule, acc.user)
    messages.success(request, f"CI trust {rule.name!r} removed.")
    return redirect("ci", slug=acc.tenant.slug)


# --- .bazelrc ---------------------------------------------------------------------------------


@tenant_view()
@require_GET
def bazelrc_builder(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    form = forms.BazelrcForm(request.GET or None)
    options = bazelrc.Options(tenant=acc.tenant.slug)
    if form.is_bound and form.is_valid():
        options = bazelrc.Options(tenant=acc.tenant.slug, **form.cleaned_data)
    # Lines for choices that were refused would be the old ones under a live Copy button.
    valid = not form.is_bound or form.is_valid()
    return page(
        request,
        acc,
        "bazelrc",
        form=form if form.is_bound else forms.BazelrcForm(),
        snippet=bazelrc.render(options) if valid else "",
        execution=options.execution,
        my_tokens=tokens.active_of(acc.tenant, acc.user) if options.execution else [],
        status=400 if form.is_bound and not form.is_valid() else 200,
    )


def admin_login(request: HttpRequest) -> HttpResponseBase:
    from django.contrib import admin
    from django.urls import reverse
    from django.utils.http import urlencode

    if settings.OIDC_ENABLED:
        return redirect(
            f"{reverse('oidc_authentication_init')}?{urlencode({'next': request.GET.get('next', '/admin/')})}"
        )
    return admin.site.login(request)
