"""The portal's page routes (included from portal/urls.py)."""

from django.urls import path

from portal import assets, oidc, views

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("oidc/authenticate/", oidc.Authenticate.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", oidc.Callback.as_view(), name="oidc_authentication_callback"),
    path("", views.dashboard, name="dashboard"),
    path("t/<slug:slug>/", views.tenant_home, name="tenant"),
    path("t/<slug:slug>/cache-mode/", views.cache_mode, name="cache_mode"),
    path("t/<slug:slug>/tokens/", views.token_list, name="tokens"),
    path("t/<slug:slug>/tokens/<int:token_id>/revoke/", views.token_revoke, name="token_revoke"),
    path("t/<slug:slug>/members/", views.members, name="members"),
    path("t/<slug:slug>/members/invite/", views.member_invite, name="member_invite"),
    path("t/<slug:slug>/members/<int:membership_id>/role/", views.member_role, name="member_role"),
    path("t/<slug:slug>/members/<int:membership_id>/remove/", views.member_remove, name="member_remove"),
    path(
        "t/<slug:slug>/invitations/<int:invitation_id>/cancel/",
        views.invitation_cancel,
        name="invitation_cancel",
    ),
    path("t/<slug:slug>/ci/", views.ci, name="ci"),
    path("t/<slug:slug>/ci/<int:rule_id>/remove/", views.ci_remove, name="ci_remove"),
    path("t/<slug:slug>/audit/", views.audit_log, name="audit"),
    path("t/<slug:slug>/usage/", views.usage_page, name="usage"),
    path("t/<slug:slug>/assets/", assets.assets_page, name="assets"),
    path("t/<slug:slug>/bazelrc/", views.bazelrc_builder, name="bazelrc"),
]
