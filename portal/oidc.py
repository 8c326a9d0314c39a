"""Portal login through the organisation's OpenID provider (mozilla-django-oidc underneath).

What this adds to the library's defaults:
- The ID token is verified strictly: RS256 only, with the provider's JWKS; `iss` must be the
  configured issuer, `aud` our client id, and `exp`, `iat`, `sub` present (OIDC Core 3.1.3.7).
  The library itself skips the audience and issuer checks.
- Users are bound on (iss, sub) through OidcIdentity, never matched by email (OIDC Core 5.7).
- The email must be verified at the provider (`email_verified: true`); it then accepts the
  tenant invitations waiting for that address (portal/invitations.py).
- Every way a login can fail (state gone after the back button, provider down, claims refused)
  ends on a page that says what happened, never on a 500.
"""

import logging
import re
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from portal import audit, invitations
from portal.models import OidcIdentity

log = logging.getLogger(__name__)


class LoginRefused(SuspiciousOperation):
    """A login the provider vouched for but that this portal refuses; the message is shown."""


class Backend(OIDCAuthenticationBackend):  # type: ignore[misc]
    def _verify_jws(self, payload: str, key: Any) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(payload)
        except jwt.PyJWTError as exc:
            raise SuspiciousOperation(f"the ID token is not a JWT: {exc}") from None
        if header.get("alg") != settings.OIDC_RP_SIGN_ALGO:
            raise SuspiciousOperation(f"the ID token is signed with {header.get('alg')!r}, not RS256")
        try:
            return jwt.decode(
                payload,
                key,
                algorithms=[settings.OIDC_RP_SIGN_ALGO],
                audience=settings.OIDC_RP_CLIENT_ID,
                issuer=settings.OIDC_OP_ISSUER,
                leeway=settings.OIDC_LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise SuspiciousOperation(f"the ID token was refused: {exc}") from None

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> User | None:
        userinfo = self.get_userinfo(access_token, id_token, payload)
        # OIDC Core 5.3.2: the UserInfo sub MUST match the ID token's before it is used.
        if userinfo.get("sub") != payload["sub"]:
            self._refuse("the provider's user info belongs to another subject")
            return None
        claims = {**payload, **userinfo}
        email = str(claims.get("email") or "").strip()
        if not email:
            self._refuse("the provider did not send an email address (scope 'email')")
            return None
        if claims.get("email_verified") not in (True, "true"):
            self._refuse(f"the email address {email} is not verified at the provider")
            return None
        return bind_identity(payload["iss"], payload["sub"], email, claims)

    def _refuse(self, reason: str) -> None:
        log.warning("OIDC login refused: %s", reason)
        self.request.oidc_refusal = reason
        audit.record("login.refused", reason=reason)


def bind_identity(issuer: str, subject: str, email: str, claims: dict[str, Any]) -> User:
    now = timezone.now()
    with transaction.atomic():
        identity = (
            OidcIdentity.objects.select_for_update()
            .select_related("user")
            .filter(issuer=issuer, subject=subject)
            .first()
        )
        if identity is None:
            user = get_user_model().objects.create_user(_free_username(claims, email), email=email)
            identity = OidcIdentity.objects.create(issuer=issuer, subject=subject, user=user)
        user = identity.user
        if user.email != email:
            user.email = email
            user.save(update_fields=["email"])
        identity.email = email
        identity.last_login_at = now
        identity.save(update_fields=["email", "last_login_at"])
        invitations.accept_pending(user, email)
    return user


def _free_username(claims: dict[str, Any], email: str) -> str:
    wanted = str(claims.get("preferred_username") or email.split("@", 1)[0])
    base = re.sub(r"[^\w.@+-]", "-", wanted)[:140] or "user"
    users = get_user_model().objects
    name, n = base, 1
    while users.filter(username=name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _require_oidc() -> None:
    if not settings.OIDC_ENABLED:
        raise Http404("OpenID Connect is not configured")


class Authenticate(OIDCAuthenticationRequestView):  # type: ignore[misc]
    def get(self, request: HttpRequest) -> HttpResponse:
        _require_oidc()
        return super().get(request)


class Callback(OIDCAuthenticationCallbackView):  # type: ignore[misc]
    def get(self, request: HttpRequest) -> HttpResponse:
        _require_oidc()
        # RFC 9207: a provider that names itself in the authorization response (`iss`) must be
        # the one the sign-in began with; another's response (a mix-up attack) is refused
        # before its code reaches any token endpoint.
        issuer = request.GET.get("iss")
        if issuer is not None and issuer.rstrip("/") != settings.OIDC_OP_ISSUER.rstrip("/"):
            log.warning("OIDC callback refused: it names another issuer (%.200r)", issuer)
            return failed(request, "The sign-in response came from another provider than this portal's.", 400)
        try:
            return super().get(request)
        except requests.ConnectionError:
            return failed(request, "The sign-in provider cannot be reached. Try again in a moment.", 502)
        except requests.Timeout:
            return failed(request, "The sign-in provider did not answer in time. Try again.", 504)
        except requests.RequestException as exc:
            log.warning("OIDC provider error: %s", exc)
            return failed(request, "The sign-in provider refused to complete this sign-in.", 502)
        except SuspiciousOperation as exc:
            log.warning("OIDC callback refused: %s", exc)
            if "state" in str(exc):
                return failed(request, _STALE, 400)
            return failed(request, f"The sign-in could not be verified: {exc}", 400)

    def login_failure(self) -> HttpResponse:
        request = self.request
        refusal = getattr(request, "oidc_refusal", None)
        if refusal:
            return failed(request, f"Sign-in refused: {refusal}.", 403)
        if request.GET.get("error"):
            detail = request.GET.get("error_description") or request.GET["error"]
            return failed(request, f"The sign-in provider reported an error: {detail}", 400)
        return failed(request, _STALE, 400)

    def login_success(self) -> HttpResponse:
        response = super().login_success()
        audit.record("login", actor=self.user, method="oidc")
        return response


_STALE = (
    "This sign-in has expired or was already used (for example after the back button). Please start again."
)


def failed(request: HttpRequest, message: str, status: int) -> HttpResponse:
    return render(request, "portal/login_failed.html", {"message": message}, status=status)
