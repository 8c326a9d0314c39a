"""The Tokens pages: the list and the form, the page a new token is shown on (once), and each
token's own page, where it is revoked after the consequences are spelled out."""

from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portal import bazelrc, forms, reveal, tenancy, tokens
from portal.access import TenantAccess, token_or_404, visible_tokens
from portal.models import WRITE_SCOPES, AccessToken, Membership
from portal.views import page, tenant_view


@dataclass(frozen=True)
class Snippet:
    key: str  # the element id, and what its copy button names
    title: str
    text: str


def snippets_for(acc: TenantAccess, token: AccessToken, cluster: str, secret: str = "") -> list[Snippet]:
    """The .bazelrc lines this token can serve: the cache always, remote execution only with
    `execute` (Bazel would stop at the first action with "not authorized"). Read-only tokens
    get read-only lines."""
    scopes = set(token.scope_list)
    read_only = not set(WRITE_SCOPES) & scopes
    options = {"tenant": acc.tenant.slug, "cluster": cluster, "token": secret, "read_only": read_only}
    found = [Snippet("bazelrc", "Remote cache", bazelrc.render(bazelrc.Options(**options)))]  # type: ignore[arg-type]
    if "execute" in scopes:
        text = bazelrc.render(bazelrc.Options(**options, execution=True))  # type: ignore[arg-type]
        found.append(Snippet("bazelrc-exec", "Remote execution", text))
    return found


def owner_choices(acc: TenantAccess) -> list[tuple[int, str]]:
    """Whom an admin may make a token for: the tenant's members, the admin first."""
    rows = Membership.objects.filter(tenant=acc.tenant).select_related("user").order_by("user__username")
    choices = [(m.user_id, m.user.get_username()) for m in rows]
    return sorted(choices, key=lambda c: c[0] != acc.user.pk)


@tenant_view()
@require_http_methods(["GET", "POST"])
@never_cache
def token_list(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    owners = owner_choices(acc) if acc.is_admin else []
    # No choice to offer when the only member is the admin themself.
    choice = owners if owners and owners != [(acc.user.pk, acc.user.get_username())] else None
    form = forms.TokenForm(request.POST or None, tenant=acc.tenant, admin=acc.is_admin, owners=choice)
    can_issue = acc.member or bool(owners)
    if request.method == "POST" and can_issue and form.is_valid():
        data = form.cleaned_data
        # Admins choose among the members (themselves when they name no one); others hold theirs.
        owner = dict(owners).get(data.get("owner") or acc.user.pk, "") if owners else acc.user.get_username()
        try:
            if not owner:
                raise tokens.TokenError("choose the member who will hold the token")
            issued = tokens.issue(
                acc.tenant,
                owner,
                name=data["name"],
                scopes=form.chosen_scopes(),
                expires_in_days=data["expires_in_days"],
                actor=acc.user,
                unique_name=True,
            )
        except tokens.NameTaken as exc:
            form.add_error("name", str(exc))
        except tokens.TokenError as exc:
            form.add_error("owner" if "owner" in form.fields and not owner else None, str(exc))
        else:
            # Post/redirect/get: a reload of the next page makes no second token. The PAT waits
            # for that page in server-side state only (portal/reveal.py).
            reveal.keep(request, "token", issued.token.pk, issued.secret)
            url = reverse("token_created", args=[acc.tenant.slug, issued.token.pk])
            return HttpResponseRedirect(f"{url}?{urlencode({'cluster': data['cluster']})}", status=303)
    return page(
        request,
        acc,
        "tokens",
        form=form,
        can_issue=can_issue,
        tokens=visible_tokens(acc),
        status=400 if request.method == "POST" else 200,
    )


@tenant_view()
@require_GET
@never_cache
def token_created(request: HttpRequest, acc: TenantAccess, token_id: int) -> HttpResponse:
    token = token_or_404(acc, token_id)
    cluster = request.GET.get("cluster", "external")
    if cluster not in settings.CLUSTERS:
        cluster = "external"
    secret = reveal.take(request, "token", token.pk)
    shown = isinstance(secret, str)
    return page(
        request,
        acc,
        "token_created",
        token=token,
        secret=secret if shown else "",
        shown=shown,
        lost=secret is reveal.Gone.LOST,
        cluster=cluster,
        snippets=snippets_for(acc, token, cluster, secret if isinstance(secret, str) else ""),
    )


@tenant_view()
@require_GET
@never_cache
def token_detail(request: HttpRequest, acc: TenantAccess, token_id: int) -> HttpResponse:
    token = token_or_404(acc, token_id)
    return page(request, acc, "token_detail", token=token, ttl=settings.REAPI_CREDENTIAL_TTL_SECONDS)


@tenant_view()
@require_POST
def token_revoke(request: HttpRequest, acc: TenantAccess, token_id: int) -> HttpResponse:
    token = token_or_404(acc, token_id)
    label = f"{token.prefix}… ({token.name or 'unnamed'})"
    if tokens.revoke_once(token, actor=acc.user):
        messages.success(request, f"Token {label} revoked; builds using it are refused within seconds.")
    else:
        when = f"{token.revoked_at:%Y-%m-%d %H:%M} UTC" if token.revoked_at else "before"
        messages.info(request, f"Token {label} was already revoked ({when}); nothing changed.")
    return redirect("tokens", slug=acc.tenant.slug)


@tenant_view()
@require_POST
def join_as_admin(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    """A superuser who sees a tenant without belonging to it joins it as an admin (audited)."""
    if acc.member:
        messages.info(request, f"You are a member of {acc.tenant.slug} already.")
    else:
        tenancy.add_member(acc.tenant, acc.user.get_username(), "admin", actor=acc.user)
        messages.success(request, f"You joined {acc.tenant.slug} as an admin.")
    back = request.POST.get("next", "")
    if back not in ("tokens", "members", "tenant"):
        back = "tenant"
    return redirect(back, slug=acc.tenant.slug)
