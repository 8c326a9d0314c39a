"""The Invocations pages: a tenant's builds (developers see those of their own credentials,
admins all) with hit rate, bytes and duration, and one build's misses with why each missed."""

from django.conf import settings
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from portal.access import TenantAccess, visible_invocations
from portal.views import page, tenant_view
from reapi import invocation_queries

PAGE_SIZE = 50


@tenant_view()
@require_GET
def invocations_page(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    page_obj = Paginator(visible_invocations(acc), PAGE_SIZE).get_page(request.GET.get("page"))
    retention = settings.REAPI_INVOCATION_RETENTION_DAYS
    return page(request, acc, "invocations", page_obj=page_obj, retention_days=retention)


@tenant_view()
@require_GET
def invocation_page(request: HttpRequest, acc: TenantAccess, invocation_id: str) -> HttpResponse:
    row = visible_invocations(acc).filter(invocation_id=invocation_id).first()
    if row is None:
        raise Http404("no such invocation")
    missed = invocation_queries.explained(row)
    return page(
        request,
        acc,
        "invocation",
        invocation=row,
        missed=missed,
        more=max(0, row.missed.count() - len(missed)),
    )
