"""The portal's error pages (handler404/403/500 in portal/urls.py): portal pages with the
navigation and a sentence on why, never Django's plain or debug text, never an exception's.

A 404 under a tenant's URL says nothing of the tenant: to an outsider an unknown slug and a
tenant they are not in look the same (portal/access.py). A 403 there is for a member, so it
keeps the tenant's navigation and names their role.
"""

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.template import loader

from portal.access import access


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    in_tenant = "slug" in getattr(request.resolver_match, "kwargs", {})
    return render(request, "404.html", {"in_tenant": in_tenant}, status=404)


def forbidden(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    context: dict[str, object] = {}
    slug = getattr(request.resolver_match, "kwargs", {}).get("slug")
    if slug and request.user.is_authenticated:
        try:
            acc = access(request.user, slug)
        except Http404:
            pass
        else:
            context.update(acc=acc, tenant=acc.tenant)
    return render(request, "403.html", context, status=403)


def server_error(request: HttpRequest) -> HttpResponse:
    # No request context: whatever failed (the database, a template tag) must not fail again here.
    return HttpResponse(loader.get_template("500.html").render(), status=500)
