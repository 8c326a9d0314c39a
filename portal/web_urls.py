"""The portal's page routes (included from portal/urls.py)."""

from django.urls import include, path

from portal import (
    account_views,
    assets,
    fleet_views,
    invocation_views,
    member_views,
    oidc,
    report_views,
    token_views,
    views,
)

# A tenant's pages, under t/<slug>/: every view takes the slug.
tenant_pages = [
    path("", views.tenant_home, name="tenant"),
    path("join/", token_views.join_as_admin, name="join_as_admin"),
    path("cache-mode/", views.cache_mode, name="cache_mode"),
    path("tokens/", token_views.token_list, name="tokens"),
    path("tokens/<int:token_id>/", token_views.token_detail, name="token_detail"),
    path("tokens/<int:token_id>/created/", token_views.token_created, name="token_created"),
    path("tokens/<int:token_id>/revoke/", token_views.token_revoke, name="token_revoke"),
    path("members/", member_views.members, name="members"),
    path("members/invite/", member_views.member_invite, name="member_invite"),
    path("members/accounts/", member_views.account_create, name="account_create"),
    path("members/<int:membership_id>/", member_views.member_detail, name="member_detail"),
    path("members/<int:membership_id>/role/", member_views.member_role, name="member_role"),
    path("members/<int:membership_id>/remove/", member_views.member_remove, name="member_remove"),
    path("members/<int:membership_id>/link/", member_views.account_link, name="account_link"),
    path("members/<int:membership_id>/account/", member_views.account_created, name="account_created"),
    path("invitations/<int:invitation_id>/cancel/", member_views.invitation_cancel, name="invitation_cancel"),
    path("ci/", views.ci, name="ci"),
    path("ci/<int:rule_id>/remove/", views.ci_remove, name="ci_remove"),
    path("audit/", report_views.audit_log, name="audit"),
    path("usage/", report_views.usage_page, name="usage"),
    path("assets/", assets.assets_page, name="assets"),
    path("invocations/", invocation_views.invocations_page, name="invocations"),
    path("invocations/<str:invocation_id>/", invocation_views.invocation_page, name="invocation"),
    path("bazelrc/", views.bazelrc_builder, name="bazelrc"),
    path("workers/", fleet_views.tenant_fleet_page, name="tenant_workers"),
    path("workers/<str:name>/", fleet_views.operation_page, name="operation"),
]

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("oidc/authenticate/", oidc.Authenticate.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", oidc.Callback.as_view(), name="oidc_authentication_callback"),
    path("set-password/done/", account_views.set_password_done, name="set_password_done"),
    path("set-password/<uidb64>/<token>/", account_views.SetPassword.as_view(), name="set_password"),
    path("", views.dashboard, name="dashboard"),
    path("t/<slug:slug>/", include(tenant_pages)),
]
