from django.contrib import admin
from django.urls import include, path

from portal import views

urlpatterns = [
    # With an OpenID provider, the admin site signs in through it too (no second password login).
    path("admin/login/", views.admin_login),
    path("admin/", admin.site.urls),
    path("api/v1/", include("portal.api_urls")),
    path("workers/", include("workers.urls")),
    path("", include("portal.web_urls")),
]
