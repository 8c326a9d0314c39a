from django.contrib import admin
from django.urls import include, path

from portal import fleet_views, forms, metrics, views

# Password sign-ins through the admin site are throttled like the portal's (portal/login_throttle.py).
admin.site.login_form = forms.AdminLoginForm

urlpatterns = [
    # With an OpenID provider, the admin site signs in through it too (no second password login).
    path("metrics", metrics.metrics_view, name="metrics"),
    path("admin/login/", views.admin_login),
    path("admin/", admin.site.urls),
    path("api/v1/", include("portal.api_urls")),
    path("workers/", fleet_views.fleet_page, name="workers"),
    path("", include("portal.web_urls")),
]

# Error pages are portal pages: navigation and a sentence on why (portal/error_views.py).
handler403 = "portal.error_views.forbidden"
handler404 = "portal.error_views.not_found"
handler500 = "portal.error_views.server_error"
