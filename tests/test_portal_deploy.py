"""Production settings: `manage.py check --deploy` is clean, and half a configuration stops start-up."""

import secrets

from tests.support.oidc import CLIENT_ID
from tests.support.servers import manage
from tests.support.tenants import Persona

PRODUCTION = {
    "DJANGO_PRODUCTION": "1",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "cache.example.com",
}
PROVIDER = {
    "OIDC_RP_CLIENT_ID": CLIENT_ID,
    "OIDC_RP_CLIENT_SECRET": "s3cret",
    "OIDC_OP_ISSUER": "https://login.example.com",
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "https://login.example.com/authorize",
    "OIDC_OP_TOKEN_ENDPOINT": "https://login.example.com/token",
    "OIDC_OP_USER_ENDPOINT": "https://login.example.com/userinfo",
    "OIDC_OP_JWKS_ENDPOINT": "https://login.example.com/jwks",
    "OIDC_GRPC_ISSUER": "https://login.example.com",
    "OIDC_GRPC_AUDIENCE": "cache.example.com",
}


def test_check_deploy_is_clean_with_production_settings() -> None:
    for extra in ({}, PROVIDER):
        result = manage(
            "check", "--deploy", "--fail-level", "WARNING", env={**PRODUCTION, **extra}, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "no issues" in result.stdout


def test_production_without_a_secret_key_stops() -> None:
    result = manage("check", env={**PRODUCTION, "DJANGO_SECRET_KEY": ""}, check=False)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is required" in result.stderr


def test_half_an_oidc_configuration_names_what_is_missing() -> None:
    result = manage("check", env={"OIDC_RP_CLIENT_ID": "portal"}, check=False)
    assert result.returncode != 0
    assert "OIDC_OP_TOKEN_ENDPOINT" in result.stderr and "OIDC_OP_ISSUER" in result.stderr
    result = manage("check", env={"OIDC_GRPC_ISSUER": "https://login.example.com"}, check=False)
    assert result.returncode != 0 and "OIDC_GRPC_AUDIENCE" in result.stderr


def test_the_invite_command_invites(acme: Persona) -> None:
    from portal.models import Invitation

    result = manage("invite", acme.slug, "Boss@Example.com", "--role", "admin")
    assert "invited boss@example.com" in result.stdout
    assert Invitation.objects.filter(tenant=acme.tenant, email="boss@example.com", role="admin").exists()
    bad = manage("invite", "no-such-tenant", "x@example.com", check=False)
    assert bad.returncode != 0 and "no tenant 'no-such-tenant'" in bad.stderr
