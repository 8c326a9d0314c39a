"""Where someone given a local account sets its password, from the link a tenant admin handed
them (portal/local_accounts.py). Django's password-reset confirmation underneath: the link's
token moves from the URL into the session before the form shows (so the page's address, which
the browser may show or send on, no longer holds it), and works until a password is set."""

from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render
from django.urls import reverse_lazy
from django.views.decorators.http import require_GET

from portal import audit
from portal.models import LocalAccount


class SetPassword(auth_views.PasswordResetConfirmView):
    template_name = "portal/set_password.html"
    success_url = reverse_lazy("set_password_done")
    post_reset_login = False  # they sign in on the login page, which accepts their invitations

    def dispatch(self, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if settings.OIDC_ENABLED:
            raise Http404("sign-in goes through the provider here")
        return super().dispatch(*args, **kwargs)

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        made = LocalAccount.objects.filter(user=form.user).select_related("tenant").first()
        audit.record(
            "account.password",
            tenant=made.tenant if made else None,
            actor=form.user,
            method="set-password link",
        )
        return response


@require_GET
def set_password_done(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/set_password_done.html")
