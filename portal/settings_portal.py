"""Settings of the portal's login, REST API, OIDC on gRPC and usage counters (README: "Portal").

Imported at the end of portal/settings.py. Like the rest of the settings, every knob is an
environment variable read strictly: a half-configured provider stops start-up with the names of
the missing variables instead of failing at the first login.
"""

import ipaddress
import re

from portal.env import SettingError, env, envint, envlist

# --- Portal login: OpenID Connect through mozilla-django-oidc ---------------------------------
# Unset OIDC_RP_CLIENT_ID: local password login for Django users (the embedded default).
OIDC_RP_CLIENT_ID = env("OIDC_RP_CLIENT_ID")
OIDC_ENABLED = bool(OIDC_RP_CLIENT_ID)
OIDC_RP_CLIENT_SECRET = env("OIDC_RP_CLIENT_SECRET")
OIDC_OP_ISSUER = env("OIDC_OP_ISSUER")
OIDC_OP_AUTHORIZATION_ENDPOINT = env("OIDC_OP_AUTHORIZATION_ENDPOINT")
OIDC_OP_TOKEN_ENDPOINT = env("OIDC_OP_TOKEN_ENDPOINT")
OIDC_OP_USER_ENDPOINT = env("OIDC_OP_USER_ENDPOINT")
OIDC_OP_JWKS_ENDPOINT = env("OIDC_OP_JWKS_ENDPOINT")
OIDC_OP_NAME = env("OIDC_OP_NAME", "your organisation's sign-in")
if OIDC_ENABLED:
    _missing = [
        name
        for name in (
            "OIDC_RP_CLIENT_SECRET",
            "OIDC_OP_ISSUER",
            "OIDC_OP_AUTHORIZATION_ENDPOINT",
            "OIDC_OP_TOKEN_ENDPOINT",
            "OIDC_OP_USER_ENDPOINT",
            "OIDC_OP_JWKS_ENDPOINT",
        )
        if not globals()[name]
    ]
    if _missing:
        raise SettingError(f"OIDC_RP_CLIENT_ID is set, so these are required too: {', '.join(_missing)}")
# Fixed: the ID token must be RS256, verified with the provider's JWKS (never HS256 with the
# client secret, never `none`).
OIDC_RP_SIGN_ALGO = "RS256"
OIDC_RP_SCOPES = env("OIDC_RP_SCOPES", "openid email profile")
OIDC_USE_PKCE = True  # RFC 7636, S256
OIDC_PKCE_CODE_CHALLENGE_METHOD = "S256"
OIDC_USE_NONCE = True
OIDC_TIMEOUT = envint("OIDC_TIMEOUT", 10)
OIDC_LEEWAY_SECONDS = envint("OIDC_LEEWAY_SECONDS", 30)
OIDC_CREATE_USER = True
OIDC_STORE_ID_TOKEN = False
OIDC_STORE_ACCESS_TOKEN = False

if OIDC_ENABLED:
    AUTHENTICATION_BACKENDS = ["portal.oidc.Backend"]
else:
    AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]

CSRF_FAILURE_VIEW = "portal.views.csrf_failure"

# --- Password sign-in throttling (portal/login_throttle.py) -------------------------------------
# Failures counted per account and per client address over LOGIN_LOCKOUT_SECONDS; at the limit
# that account or address is locked for LOGIN_LOCKOUT_SECONDS (the right password too).
LOGIN_MAX_FAILURES_PER_ACCOUNT = envint("LOGIN_MAX_FAILURES_PER_ACCOUNT", 5)
LOGIN_MAX_FAILURES_PER_ADDRESS = envint("LOGIN_MAX_FAILURES_PER_ADDRESS", 20)
LOGIN_LOCKOUT_SECONDS = envint("LOGIN_LOCKOUT_SECONDS", 900)
for _name in ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "LOGIN_MAX_FAILURES_PER_ADDRESS", "LOGIN_LOCKOUT_SECONDS"):
    if globals()[_name] < 1:
        raise SettingError(f"{_name} must be at least 1")
# The client's address: REMOTE_ADDR, unless a proxy in front sets this header (its last address
# is the one the proxy saw). Name it only behind such a proxy: anyone can send the header, and a
# client that picks its own address escapes the per-address limit.
PORTAL_CLIENT_IP_HEADER = env("PORTAL_CLIENT_IP_HEADER").strip()
if PORTAL_CLIENT_IP_HEADER and not re.fullmatch(r"[A-Za-z0-9-]+", PORTAL_CLIENT_IP_HEADER):
    raise SettingError(f"PORTAL_CLIENT_IP_HEADER must be a header name, not {PORTAL_CLIENT_IP_HEADER!r}")
PORTAL_CLIENT_IP_META = (
    "HTTP_" + PORTAL_CLIENT_IP_HEADER.upper().replace("-", "_") if PORTAL_CLIENT_IP_HEADER else ""
)
# Where the counters live: this process's memory by default; Redis to share them between
# several portal processes (otherwise each process allows the limits on its own).
PORTAL_CACHE_URL = env("PORTAL_CACHE_URL", "locmem://")
if PORTAL_CACHE_URL == "locmem://":
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "portal"}}
elif PORTAL_CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": PORTAL_CACHE_URL}
    }
else:
    _scheme = PORTAL_CACHE_URL.partition(":")[0]  # not the rest: it may hold a password
    raise SettingError(f"PORTAL_CACHE_URL must be locmem:// or a redis:// URL, not {_scheme}:…")

# --- REST API -----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # The PAT class first: its WWW-Authenticate makes an anonymous call a 401, not a 403.
        "portal.api_auth.PatAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Remote cache portal API",
    "DESCRIPTION": "Tenants, members and personal access tokens of the REAPI remote cache.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
}

# --- OIDC on the gRPC endpoint (CI runners; reapi/jwt_auth.py) ----------------------------------
OIDC_GRPC_ISSUER = env("OIDC_GRPC_ISSUER")
OIDC_GRPC_AUDIENCE = env("OIDC_GRPC_AUDIENCE")
OIDC_GRPC_JWKS_URL = env("OIDC_GRPC_JWKS_URL")
OIDC_GRPC_ALGORITHMS = envlist("OIDC_GRPC_ALGORITHMS", "RS256,ES256")
OIDC_GRPC_LEEWAY_SECONDS = envint("OIDC_GRPC_LEEWAY_SECONDS", 30)
OIDC_GRPC_JWKS_REFETCH_SECONDS = envint("OIDC_GRPC_JWKS_REFETCH_SECONDS", 60)
OIDC_GRPC_JWKS_MAX_AGE_SECONDS = envint("OIDC_GRPC_JWKS_MAX_AGE_SECONDS", 3600)
OIDC_GRPC_TIMEOUT = envint("OIDC_GRPC_TIMEOUT", 5)
if OIDC_GRPC_ISSUER and not OIDC_GRPC_AUDIENCE:
    raise SettingError("OIDC_GRPC_ISSUER is set, so OIDC_GRPC_AUDIENCE is required too")
# Public-key algorithms only: a symmetric one would let anyone holding the (public) JWKS sign.
_ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
_bad_algs = [a for a in OIDC_GRPC_ALGORITHMS if a not in _ASYMMETRIC]
if _bad_algs:
    raise SettingError(
        f"OIDC_GRPC_ALGORITHMS may name only public-key algorithms ({', '.join(sorted(_ASYMMETRIC))}), "
        f"not {', '.join(_bad_algs)}"
    )

# --- Usage counters (reapi/usage.py) ------------------------------------------------------------
# How often a gRPC server process adds what it counted in memory to the database.
REAPI_USAGE_FLUSH_SECONDS = envint("REAPI_USAGE_FLUSH_SECONDS", 10)

# --- The portal's /metrics (portal/metrics.py) ---------------------------------------------
# Addresses or networks allowed to scrape, comma-separated (e.g. 10.0.0.0/8,127.0.0.1); and/or
# a bearer a scraper sends. Neither set: /metrics answers 403 to everyone.
METRICS_ALLOWED_IPS = envlist("METRICS_ALLOWED_IPS")
try:
    METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network(text, strict=False) for text in METRICS_ALLOWED_IPS]
except ValueError as _exc:
    raise SettingError(f"METRICS_ALLOWED_IPS: {_exc}") from None
METRICS_BEARER_TOKEN = env("METRICS_BEARER_TOKEN")
