"""REST API authentication by personal access token: `Authorization: Bearer aw_pat_…`.

Only a tenant admin's PAT with the portal:admin scope opens the API, and only for that token's
tenant (portal/api.py); the REAPI scopes alone never do, so a token made for Bazel cannot mint
tokens or manage members. The same checks as the gRPC edge: format and checksum before any
query, then the digest.
"""

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from portal import audit, pats
from portal.models import ADMIN_SCOPE, AccessToken, Membership, Role

LAST_USED_RESOLUTION = timedelta(minutes=1)


class PatAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, AccessToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        value = value.strip()
        try:
            pats.check_format(value)
        except pats.MalformedToken as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None
        token = AccessToken.objects.select_related("tenant", "user").filter(digest=pats.digest(value)).first()
        if token is None:
            raise exceptions.AuthenticationFailed("unknown personal access token")
        status = token.status()
        if status != "active":
            raise exceptions.AuthenticationFailed(f"personal access token {token.prefix}… is {status}")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(f"the owner of token {token.prefix}… is deactivated")
        if not Membership.objects.filter(tenant=token.tenant, user=token.user, role=Role.ADMIN).exists():
            raise exceptions.PermissionDenied("the API accepts personal access tokens of tenant admins only")
        if ADMIN_SCOPE not in token.scope_list:
            raise exceptions.PermissionDenied(
                f"personal access token {token.prefix}… lacks the {ADMIN_SCOPE} scope the API requires"
            )
        note_use(token)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def note_use(token: AccessToken) -> None:
    """last_used_at at most once a minute; the first use is audited once."""
    now = timezone.now()
    if token.last_used_at and now - token.last_used_at < LAST_USED_RESOLUTION:
        return
    rows = AccessToken.objects.filter(pk=token.pk)
    first = token.first_used_at is None
    if first and rows.filter(first_used_at__isnull=True).update(first_used_at=now, last_used_at=now):
        audit.record("token.first_use", tenant=token.tenant, token_prefix=token.prefix, via="api")
        return
    rows.update(last_used_at=now)


class PatScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema describes PatAuthentication."""

    target_class = "portal.api_auth.PatAuthentication"
    name = "personalAccessToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "A tenant admin's personal access token with the portal:admin scope: "
                "Authorization: Bearer aw_pat_…"
            ),
        }
