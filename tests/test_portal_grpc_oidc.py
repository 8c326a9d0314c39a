"""CI runners' OIDC tokens on a real REAPI server over a socket: tokens the test provider issues
(oidc-provider, tests/oidc-provider/) and tokens forged here with its key or others; the server
trusts the provider through OIDC_GRPC_* variables."""

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from portal import ci_identities
from portal.models import CiIdentity
from tests.support.oidc import CI_CLAIMS, CI_CLIENT_ID, GRPC_AUDIENCE, OidcProvider
from tests.support.reapi_client import Client
from tests.support.servers import ReapiServer, manage
from tests.support.tenants import Persona

REFETCH_SECONDS = 2


@dataclass
class JwtClient(Client):
    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with OidcProvider(users=[]) as p:
        yield p


@pytest.fixture(scope="module")
def server(provider: OidcProvider) -> Iterator[ReapiServer]:
    env = provider.grpc_env(OIDC_GRPC_JWKS_REFETCH_SECONDS=str(REFETCH_SECONDS), OIDC_GRPC_LEEWAY_SECONDS="5")
    with ReapiServer("internal", env=env) as s:
        yield s


@pytest.fixture
def trust(provider: OidcProvider, acme: Persona) -> Iterator[CiIdentity]:
    """acme trusts CI tokens whose `repository` claim is its own repository."""
    from django.test import override_settings

    with override_settings(OIDC_GRPC_ISSUER=provider.issuer):
        rule = ci_identities.add(
            acme.tenant,
            name="main builds",
            claim="repository",
            value=f"acme/{acme.slug}",
            user_id=acme.tenant.memberships.get(user__username=acme.admin).user_id,
            scopes="cas:read,ac:read,cas:write,ac:write",
        )
    yield rule
    rule.delete()


def unique(**claims: object) -> dict[str, object]:
    return {"sub": "repo:acme", "jti": uuid.uuid4().hex, **claims}


def call(server: ReapiServer, token: str) -> Client:
    return JwtClient(server.channel(), token)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, object], alg: str = "none") -> str:
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


def test_a_token_from_the_provider_is_accepted_and_writes(
    server: ReapiServer, provider: OidcProvider, acme: Persona
) -> None:
    from django.test import override_settings

    with override_settings(OIDC_GRPC_ISSUER=provider.issuer):
        rule = ci_identities.add(
            acme.tenant,
            name="ci client",
            claim="sub",
            value="ci-runner",
            user_id=acme.tenant.memberships.get(user__username=acme.admin).user_id,
            scopes="cas:read,ac:read,cas:write,ac:write",
        )
    try:
        token = provider.client_credentials_token(GRPC_AUDIENCE)  # issued by the provider itself
        client = call(server, token)
        assert client.get_capabilities().cache_capabilities.action_cache_update_capabilities.update_enabled
        reply = client.upload(b"built by CI")
        assert reply.responses[0].status.code == 0
    finally:
        rule.delete()


def test_a_token_from_the_provider_maps_to_a_tenant_by_its_repository_claim(
    server: ReapiServer, provider: OidcProvider, acme: Persona
) -> None:
    from django.test import override_settings

    token = provider.client_credentials_token(GRPC_AUDIENCE)
    claims = jwt.decode(
        token, provider.public_pem(), algorithms=["RS256"], audience=GRPC_AUDIENCE, issuer=provider.issuer
    )
    assert claims["sub"] == CI_CLIENT_ID
    assert {k: claims.get(k) for k in CI_CLAIMS} == CI_CLAIMS

    with override_settings(OIDC_GRPC_ISSUER=provider.issuer):
        rule = ci_identities.add(
            acme.tenant,
            name="app builds",
            claim="repository",
            value=CI_CLAIMS["repository"],
            user_id=acme.tenant.memberships.get(user__username=acme.admin).user_id,
            scopes="cas:read,ac:read",
        )
    try:
        client = call(server, token)
        # Read-only: the scopes of this rule, the only one that trusts the repository.
        assert (
            not client.get_capabilities().cache_capabilities.action_cache_update_capabilities.update_enabled
        )
        with pytest.raises(grpc.RpcError) as denied:
            client.upload(b"not from this rule")
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        rule.delete()


def test_a_claim_maps_to_the_rules_scopes(
    server: ReapiServer, provider: OidcProvider, trust: CiIdentity
) -> None:
    trust.scopes = "cas:read,ac:read"
    trust.save()
    client = call(server, provider.sign(unique(repository=trust.value)))
    assert not client.get_capabilities().cache_capabilities.action_cache_update_capabilities.update_enabled
    with pytest.raises(grpc.RpcError) as denied:
        client.upload(b"poison")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_tenant_comes_from_the_rule(
    server: ReapiServer, provider: OidcProvider, trust: CiIdentity, globex: Persona
) -> None:
    client = call(server, provider.sign(unique(repository=trust.value)))
    client.instance = globex.slug
    with pytest.raises(grpc.RpcError) as denied:
        client.upload(b"elsewhere")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def hs256_with_public_key(provider: OidcProvider, claims: dict[str, object]) -> str:
    # The classic confusion attack: HMAC keyed with the issuer's published public key.
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": provider.kid}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(provider.public_pem(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


BAD_TOKENS = {
    "alg none": (
        lambda p, v: unsigned({"iss": p.issuer, "aud": GRPC_AUDIENCE, "exp": 2**31, "repository": v}),
        "'none' is not accepted",
    ),
    "HS256 with the public key": (
        lambda p, v: hs256_with_public_key(
            p, {"iss": p.issuer, "aud": GRPC_AUDIENCE, "exp": 2**31, "repository": v}
        ),
        "'HS256' is not accepted",
    ),
    "wrong audience": (lambda p, v: p.sign(unique(repository=v, aud="someone-else")), "not for this service"),
    "wrong issuer": (lambda p, v: p.sign(unique(repository=v, iss="http://127.0.0.1:1/evil")), "issuer"),
    "expired": (lambda p, v: p.sign(unique(repository=v, exp=int(time.time()) - 600)), "expired"),
    "no exp": (lambda p, v: p.sign(unique(repository=v, exp=None)), "'exp'"),
    "no aud": (lambda p, v: p.sign(unique(repository=v, aud=None)), "'aud'"),
    "untrusted subject": (lambda p, v: p.sign(unique(repository="someone/else")), "no tenant trusts"),
    "garbage": (lambda p, v: "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln", "signature|decod|invalid|refused|JWKS"),
    # The server's own words, not the JWT library's.
    "tampered claims": (
        lambda p, v: tampered(p, v),
        "^the OIDC token was refused: its signature does not verify$",
    ),
    "not valid yet": (
        lambda p, v: p.sign(unique(repository=v, nbf=int(time.time()) + 600)),
        r"^the OIDC token was refused: it is not valid yet \(nbf or iat is in the future\)$",
    ),
}


def tampered(provider: OidcProvider, value: str) -> str:
    """A token the provider signed, with its claims swapped for others after signing."""
    header, _claims, signature = provider.sign(unique(repository="someone/else")).split(".")
    claims = {"iss": provider.issuer, "aud": GRPC_AUDIENCE, "exp": 2**31, **unique(repository=value)}
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_a_bad_token_is_unauthenticated(
    server: ReapiServer, provider: OidcProvider, trust: CiIdentity, case: str
) -> None:
    make, reason = BAD_TOKENS[case]
    with pytest.raises(grpc.RpcError) as refused:
        call(server, make(provider, trust.value)).get_capabilities()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert re.search(reason, refused.value.details() or "", re.IGNORECASE), refused.value.details()


def test_a_rotated_key_is_fetched_and_forged_kids_are_rate_limited(
    server: ReapiServer, provider: OidcProvider, trust: CiIdentity
) -> None:
    assert call(server, provider.sign(unique(repository=trust.value))).get_capabilities()
    time.sleep(REFETCH_SECONDS + 0.2)
    before = provider.jwks_fetches()
    new_kid = provider.add_key()
    assert call(server, provider.sign(unique(repository=trust.value), kid=new_kid)).get_capabilities()
    assert provider.jwks_fetches() == before + 1, "an unknown kid refetches the JWKS once"

    # A key the provider never published, under ten made-up kids: refused, and no more fetches
    # within the rate limit.
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for i in range(10):
        claims = {
            "iss": provider.issuer,
            "aud": GRPC_AUDIENCE,
            "exp": int(time.time()) + 60,
            **unique(repository=trust.value),
        }
        forged = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": f"forged-{i}"})
        with pytest.raises(grpc.RpcError) as refused:
            call(server, forged).get_capabilities()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not in the issuer's JWKS" in (refused.value.details() or "")
    assert provider.jwks_fetches() == before + 1


def test_an_es256_key_works_too(server: ReapiServer, provider: OidcProvider, trust: CiIdentity) -> None:
    kid = provider.add_key("ec")
    time.sleep(REFETCH_SECONDS + 0.2)
    assert call(
        server, provider.sign(unique(repository=trust.value), kid=kid, alg="ES256")
    ).get_capabilities()


def test_a_symmetric_algorithm_in_the_settings_stops_start_up(provider: OidcProvider) -> None:
    result = manage("check", env=provider.grpc_env(OIDC_GRPC_ALGORITHMS="RS256,HS256"), check=False)
    assert result.returncode != 0
    assert "public-key algorithms" in result.stderr and "HS256" in result.stderr
