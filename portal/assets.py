"""The Assets page: what the Remote Asset API cached for a tenant (reapi.models.Asset), for
workstations whose .bazelrc uses the remote downloader (the .bazelrc builder's option)."""

from django.conf import settings
from django.core.paginator import Paginator
from django.db.models import Count, F, Sum
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from portal.access import TenantAccess
from portal.views import page, tenant_view
from reapi.models import Asset

PAGE_SIZE = 50


@tenant_view()
@require_GET
def assets_page(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    rows = Asset.objects.filter(tenant=acc.tenant).order_by(
        F("last_used_at").desc(nulls_last=True), "-first_fetched_at", "-id"
    )
    totals = rows.aggregate(count=Count("id"), stored=Sum("digest_size"), hits=Sum("hits"))
    page_obj = Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page"))
    return page(
        request,
        acc,
        "assets",
        page_obj=page_obj,
        totals=totals,
        allowed=settings.REAPI_ASSET_ALLOWED_URLS,
        max_bytes=settings.REAPI_ASSET_MAX_BYTES,
    )
