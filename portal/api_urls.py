"""REST API v1 routes and its OpenAPI schema (included at /api/v1/ from portal/urls.py)."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from portal import api

urlpatterns = [
    path(
        "schema/",
        SpectacularAPIView.as_view(permission_classes=[], authentication_classes=[]),
        name="api-schema",
    ),
    path("tenants/", api.TenantList.as_view(), name="api-tenants"),
    path("tenants/<slug:slug>/", api.TenantDetail.as_view(), name="api-tenant"),
    path("tenants/<slug:slug>/tokens/", api.TokenList.as_view(), name="api-tokens"),
    path("tenants/<slug:slug>/tokens/<int:token_id>/", api.TokenDetail.as_view(), name="api-token"),
    path(
        "tenants/<slug:slug>/tokens/<int:token_id>/revoke/",
        api.TokenRevoke.as_view(),
        name="api-token-revoke",
    ),
    path("tenants/<slug:slug>/members/", api.MemberList.as_view(), name="api-members"),
    path(
        "tenants/<slug:slug>/members/<int:membership_id>/",
        api.MemberDetail.as_view(),
        name="api-member",
    ),
    path("tenants/<slug:slug>/invocations/", api.InvocationList.as_view(), name="api-invocations"),
    path(
        "tenants/<slug:slug>/invocations/<str:invocation_id>/",
        api.InvocationDetail.as_view(),
        name="api-invocation",
    ),
]
