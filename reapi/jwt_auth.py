"""OIDC JWTs from CI runners on the gRPC endpoint: `authorization: Bearer <JWT>`.

The request path (docs/architecture.md), step 2. The token must come from OIDC_GRPC_ISSUER for OIDC_GRPC_AUDIENCE:
- the algorithm is taken from a fixed list of public-key algorithms (OIDC_GRPC_ALGORITHMS), never
  from the token alone: `alg: none` and HS256 "signed" with the published public key are refused
  before any key is looked at (RFC 8725 3.1, 3.2);
- `iss`, `aud` and `exp` are required (RFC 8725 3.8, 3.9), with OIDC_GRPC_LEEWAY_SECONDS of clock
  skew allowed;
- keys come from the issuer's JWKS, cached; an unknown `kid` refetches it, at most once per
  OIDC_GRPC_JWKS_REFETCH_SECONDS, so a flood of forged kids cannot hammer the provider.
A verified token is then mapped to a member and scopes by the tenant's CI trust rules
(portal.models.CiIdentity: a claim, e.g. `sub` or `repository`, and the value it must have).
"""

import hashlib
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import requests
from django.conf import settings
from django.db import close_old_connections

from portal.models import CiIdentity, Membership
from reapi.auth import CredentialCache, Principal, member_principal
from reapi.errors import Unauthenticated, Unavailable
from reapi.once import Once

log = logging.getLogger(__name__)


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and credential.startswith("eyJ")


class Jwks:
    """The issuer's signing keys by kid, fetched on first use and refreshed when stale."""

    def __init__(self, url: str, timeout: float, refetch_seconds: float, max_age_seconds: float) -> None:
        self.url = url
        self.timeout = timeout
        self.refetch_seconds = refetch_seconds
        self.max_age_seconds = max_age_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch (monotonic)
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._lock = threading.Lock()
        self.fetches = 0

    def key(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        if self._fetched_at is None or now - self._fetched_at > self.max_age_seconds:
            self._refresh(min_interval=0 if self._fetched_at is None else self.refetch_seconds)
        found = self._find(kid)
        if found is None:
            # A key the cache does not know: perhaps the issuer rotated. Ask again, rate-limited.
            self._refresh(min_interval=self.refetch_seconds)
            found = self._find(kid)
        if found is None:
            if not self._keys and self._fetched_at is None:
                raise Unavailable("the OIDC issuer's keys cannot be fetched; retry shortly")
            raise Unauthenticated(f"JWT key id {kid!r} is not in the issuer's JWKS")
        return found

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        keys = self._keys
        if kid is None:
            # RFC 7515 4.1.4: kid is optional; without one, only an unambiguous JWKS will do.
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)

    def _refresh(self, min_interval: float) -> None:
        with self._lock:
            now = time.monotonic()
            if self._attempted_at is not None and now - self._attempted_at < min_interval:
                return
            self._attempted_at = now
            self.fetches += 1
            try:
                reply = requests.get(self.url, timeout=self.timeout)
                reply.raise_for_status()
                document = reply.json()
            except (requests.RequestException, ValueError) as exc:
                log.warning("JWKS fetch from %s failed: %s", self.url, exc)
                return
            keys = {}
            for entry in document.get("keys", []):
                if entry.get("use", "sig") != "sig" or "kid" not in entry:
                    continue
                try:
                    keys[str(entry["kid"])] = jwt.PyJWK(entry)
                except jwt.PyJWTError:
                    continue  # a key type this server does not use
            self._keys = keys
            self._fetched_at = now


def _make_jwks() -> Jwks:
    return Jwks(
        settings.OIDC_GRPC_JWKS_URL or _discover_jwks_url(),
        settings.OIDC_GRPC_TIMEOUT,
        settings.OIDC_GRPC_JWKS_REFETCH_SECONDS,
        settings.OIDC_GRPC_JWKS_MAX_AGE_SECONDS,
    )


jwks = Once(_make_jwks)


def _discover_jwks_url() -> str:
    # OpenID Connect Discovery 1.0, section 4: the configuration lives under the issuer.
    url = settings.OIDC_GRPC_ISSUER.rstrip("/") + "/.well-known/openid-configuration"
    try:
        reply = requests.get(url, timeout=settings.OIDC_GRPC_TIMEOUT)
        reply.raise_for_status()
        return str(reply.json()["jwks_uri"])
    except (requests.RequestException, ValueError, KeyError) as exc:
        log.warning("OIDC discovery at %s failed: %s", url, exc)
        raise Unavailable("the OIDC issuer's configuration cannot be fetched; retry shortly") from None


def verify(token: str) -> dict[str, Any]:
    """The token's claims, once its signature, algorithm, issuer, audience and expiry check out."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        log.info("refused a bearer JWT: %s", exc)
        raise Unauthenticated("bearer credential is not a valid JWT: its header cannot be decoded") from None
    alg = header.get("alg")
    allowed = settings.OIDC_GRPC_ALGORITHMS
    if alg not in allowed:
        raise Unauthenticated(f"JWT algorithm {alg!r} is not accepted (accepted: {', '.join(allowed)})")
    key = jwks().key(header.get("kid"))
    if key.algorithm_name and key.algorithm_name != alg:
        raise Unauthenticated(f"JWT algorithm {alg} does not match its key ({key.algorithm_name})")
    try:
        return jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=settings.OIDC_GRPC_AUDIENCE,
            issuer=settings.OIDC_GRPC_ISSUER,
            leeway=settings.OIDC_GRPC_LEEWAY_SECONDS,
            options={"require": ["exp", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("the OIDC token has expired") from None
    except jwt.InvalidAudienceError:
        raise Unauthenticated(
            f"the OIDC token is not for this service (aud must be {settings.OIDC_GRPC_AUDIENCE!r})"
        ) from None
    except jwt.InvalidIssuerError:
        raise Unauthenticated("the OIDC token comes from an issuer this service does not trust") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthenticated(f"the OIDC token lacks the {exc.claim!r} claim") from None
    except jwt.PyJWTError as exc:
        # The library's own words stay in the log: the client learns which check failed.
        log.info("refused an OIDC token: %s: %s", type(exc).__name__, exc)
        raise Unauthenticated(f"the OIDC token was refused: {_refusal(exc)}") from None


def _refusal(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.InvalidSignatureError):
        return "its signature does not verify"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "it is not valid yet (nbf or iat is in the future)"
    if isinstance(exc, jwt.InvalidIssuedAtError):
        return "its iat claim is not a time"
    if isinstance(exc, jwt.DecodeError):
        return "it cannot be decoded"
    return "one of its claims does not check out"


def _claim_matches(actual: Any, wanted: str) -> bool:
    if isinstance(actual, list):
        return wanted in [str(item) for item in actual]
    if isinstance(actual, bool):
        return wanted == str(actual).lower()
    return actual is not None and str(actual) == wanted


def principal_for(claims: dict[str, Any]) -> Principal:
    close_old_connections()
    rules = [
        rule
        for rule in CiIdentity.objects.select_related("tenant", "user").filter(
            issuer=settings.OIDC_GRPC_ISSUER, user__is_active=True
        )
        if _claim_matches(claims.get(rule.claim), rule.value)
    ]
    subject = str(claims.get("sub", ""))[:200]
    if not rules:
        raise Unauthenticated(f"no tenant trusts this OIDC token (sub {subject!r})")
    if len({r.tenant_id for r in rules}) > 1:
        # The tenant comes from the credential; with two candidates there is nothing to choose by.
        raise Unauthenticated(
            f"more than one tenant trusts this OIDC token (sub {subject!r}); refusing to guess"
        )
    rules.sort(key=lambda r: r.pk)
    first = rules[0]
    if not Membership.objects.filter(tenant_id=first.tenant_id, user_id=first.user_id).exists():
        raise Unauthenticated("the member this OIDC token acts as has left the tenant")
    scopes = frozenset(s for r in rules if r.user_id == first.user_id for s in r.scope_list)
    expires = datetime.fromtimestamp(int(claims["exp"]), UTC) + timedelta(
        seconds=settings.OIDC_GRPC_LEEWAY_SECONDS
    )
    return member_principal(
        first.tenant,
        first.user,
        scopes,
        expires,
        # One bucket per OIDC subject, whichever of its (short-lived) tokens it presents.
        bucket=f"oidc:{subject}",
        label=f"OIDC subject {subject!r}",
        token_prefix=f"oidc:{first.name}"[:40],
    )


_cache = CredentialCache(settings.REAPI_CREDENTIAL_TTL_SECONDS)


def authenticate(token: str) -> Principal:
    if not settings.OIDC_GRPC_ISSUER:
        raise Unauthenticated("OIDC tokens are not accepted here: no issuer is configured (OIDC_GRPC_ISSUER)")

    def check() -> Principal | Unauthenticated:
        try:
            return principal_for(verify(token))
        except Unauthenticated as exc:
            return exc  # cached: the same token is refused again without a signature check

    return _cache.principal(
        hashlib.sha256(token.encode()).hexdigest(),
        check,
        lambda _who: "the OIDC token has expired",
        "CI trust",
    )
