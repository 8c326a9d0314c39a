"""The one settings module: every knob is an environment variable (see README).

Defaults are the embedded setup, which needs no server: SQLite, blobs on the local
filesystem and a filesystem Celery broker, all under DATA_DIR.
"""

from pathlib import Path

import dj_database_url

from portal import rates
from portal.env import SettingError, env, envbool, envbytes, envint, envlist, required
from portal.storage_urls import storage_from_url
from reapi.egress import parse_prefixes

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env("DATA_DIR", "./var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

PRODUCTION = envbool("DJANGO_PRODUCTION")
# Django's debug pages show settings and every URL pattern to whoever asks: only on request,
# for development, and never in production.
DEBUG = envbool("DJANGO_DEBUG")
if DEBUG and PRODUCTION:
    raise SettingError("DJANGO_DEBUG=1 and DJANGO_PRODUCTION=1 exclude each other")

if PRODUCTION:
    SECRET_KEY = required("DJANGO_SECRET_KEY")
    ALLOWED_HOSTS = envlist("DJANGO_ALLOWED_HOSTS")
    if not ALLOWED_HOSTS:
        required("DJANGO_ALLOWED_HOSTS")
else:
    SECRET_KEY = env("DJANGO_SECRET_KEY", "dev-only-insecure-key-not-for-production-use-0123456789")
    ALLOWED_HOSTS = envlist("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "portal",
    "reapi",
    "workers",
]

MIDDLEWARE = [
    # First, so its latency covers every other middleware (portal/metrics.py).
    "portal.metrics.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files straight from the portal's own process, hashed and compressed (no web
    # server needed in front of it for them).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "portal.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# Response headers in every mode (production adds HSTS and secure cookies below).
SECURE_CONTENT_TYPE_NOSNIFF = True  # X-Content-Type-Options: nosniff
SECURE_REFERRER_POLICY = "same-origin"  # no URL of the portal goes to another site
X_FRAME_OPTIONS = "DENY"  # with the CSP's frame-ancestors 'none' (portal/csp.py)

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", f"sqlite:///{DATA_DIR / 'portal.sqlite3'}"),
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 600),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the gRPC threads read while a writer commits; IMMEDIATE avoids the
    # "database is locked" upgrade deadlock between two writers.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = None
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# `manage.py collectstatic` fills it (make run and runall do): names carry a hash of their
# content, so browsers may cache them for ever, with gzip copies beside them.
STATIC_ROOT = DATA_DIR / "static"

# The production server runall and deploy/ start the portal under (gunicorn).
PORTAL_WORKERS = envint("PORTAL_WORKERS", 2)
PORTAL_TIMEOUT = envint("PORTAL_TIMEOUT", 30)

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

# --- REAPI clusters -------------------------------------------------------------------------
CLUSTERS = ("internal", "external")
REAPI_STORAGE_URLS = {
    "internal": env("REAPI_STORAGE_INTERNAL", f"file://{DATA_DIR / 'blobs' / 'internal'}"),
    "external": env("REAPI_STORAGE_EXTERNAL", f"file://{DATA_DIR / 'blobs' / 'external'}"),
}
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(DATA_DIR / "media")},
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
for _cluster, _url in REAPI_STORAGE_URLS.items():
    STORAGES[f"reapi-{_cluster}"] = storage_from_url(f"REAPI_STORAGE_{_cluster.upper()}", _url, BASE_DIR)

REAPI_TLS_CERT = env("REAPI_TLS_CERT")
REAPI_TLS_KEY = env("REAPI_TLS_KEY")
_scheme = "grpcs" if REAPI_TLS_CERT else "grpc"
REAPI_URLS = {
    "external": env("REAPI_EXTERNAL_URL", f"{_scheme}://127.0.0.1:8980"),
    "internal": env("REAPI_INTERNAL_URL", f"{_scheme}://127.0.0.1:8981"),
}
# gRPC's receive limit; batches are advertised a little below it (REAPI: max_batch_total_size_bytes).
REAPI_MAX_MESSAGE_BYTES = envint("REAPI_MAX_MESSAGE_BYTES", 4 * 1024 * 1024)
# The most entries one action result may hold: its outputs, and every directory, file and
# symlink of its output directories' Trees (reapi/messages.py). It bounds what GetActionResult's
# completeness check walks for one entry; UpdateActionResult refuses a result above it.
REAPI_MAX_RESULT_ENTRIES = envint("REAPI_MAX_RESULT_ENTRIES", 100_000)
if REAPI_MAX_RESULT_ENTRIES < 1:
    raise SettingError(f"REAPI_MAX_RESULT_ENTRIES must be at least 1, not {REAPI_MAX_RESULT_ENTRIES}")
# Threads per server process for Execute, WaitExecution and WaitOperation, which wait as long as
# their action runs (reapi/methods.py WAITING_METHODS): the most actions one process follows.
REAPI_WAITING_THREADS = envint("REAPI_WAITING_THREADS", 512)
# How long a validated credential is trusted before the database is asked again: the bound on
# how late a revocation takes effect on a running server.
REAPI_CREDENTIAL_TTL_SECONDS = envint("REAPI_CREDENTIAL_TTL_SECONDS", 2)
# Per credential and server process (reapi/limits.py): calls per second with a burst, unless
# the tenant has its own (`manage.py tenant rate`), and streams open at once. The rate is above
# what one process answers (bench/: ~3,800 GetActionResult/s), so it never slows one build.
try:
    REAPI_TOKEN_RATE = rates.parse(env("REAPI_TOKEN_RATE", "5000:10000"))
except rates.RateError as exc:
    raise SettingError(f"REAPI_TOKEN_RATE: {exc}") from None
REAPI_TOKEN_STREAMS = envint("REAPI_TOKEN_STREAMS", 300)
# Calls one thread pool of a server process lets wait for a thread; beyond, UNAVAILABLE at once.
REAPI_MAX_QUEUED = envint("REAPI_MAX_QUEUED", 256)
if REAPI_TOKEN_STREAMS < 1 or REAPI_MAX_QUEUED < 1:
    raise SettingError("REAPI_TOKEN_STREAMS and REAPI_MAX_QUEUED must be at least 1")
# How long a build's invocation record and its misses' explanations are kept (reapi/invocations.py).
REAPI_INVOCATION_RETENTION_DAYS = envint("REAPI_INVOCATION_RETENTION_DAYS", 30)
if REAPI_INVOCATION_RETENTION_DAYS < 1:
    raise SettingError("REAPI_INVOCATION_RETENTION_DAYS must be at least 1")
# Where partially uploaded ByteStream writes wait, so QueryWriteStatus can resume them.
# Observability: HOST:PORT of the HTTP listener for /metrics, /healthz and /readyz (unset:
# none); the request log's format; seconds a stopping server answers NOT_SERVING before it
# stops taking calls, so load balancers move away first.
REAPI_METRICS_LISTEN = env("REAPI_METRICS_LISTEN")
REAPI_METRICS_TENANT_LABELS = envbool("REAPI_METRICS_TENANT_LABELS", False)
REAPI_LOG_FORMAT = env("REAPI_LOG_FORMAT", "logfmt")
if REAPI_LOG_FORMAT not in ("logfmt", "json"):
    raise SettingError(f"REAPI_LOG_FORMAT must be logfmt or json, not {REAPI_LOG_FORMAT!r}")
REAPI_REQUEST_LOG = env("REAPI_REQUEST_LOG", "all")
if REAPI_REQUEST_LOG not in ("all", "errors"):
    raise SettingError(f"REAPI_REQUEST_LOG must be all or errors, not {REAPI_REQUEST_LOG!r}")
REAPI_READINESS_SECONDS = envint("REAPI_READINESS_SECONDS", 5)
if REAPI_READINESS_SECONDS < 1:
    raise SettingError(f"REAPI_READINESS_SECONDS must be at least 1, not {REAPI_READINESS_SECONDS}")
REAPI_DRAIN_SECONDS = envint("REAPI_DRAIN_SECONDS", 0)
if REAPI_DRAIN_SECONDS < 0:
    raise SettingError(f"REAPI_DRAIN_SECONDS must be at least 0, not {REAPI_DRAIN_SECONDS}")

REAPI_UPLOAD_DIR = DATA_DIR / "uploads"
# A partial upload untouched this long is removed by the maintenance job (reapi/uploads.py).
REAPI_UPLOAD_EXPIRY_HOURS = envint("REAPI_UPLOAD_EXPIRY_HOURS", 24)
if REAPI_UPLOAD_EXPIRY_HOURS < 1:
    raise SettingError(f"REAPI_UPLOAD_EXPIRY_HOURS must be at least 1, not {REAPI_UPLOAD_EXPIRY_HOURS}")
# Eviction (reapi/eviction.py): a periodic Celery job on the `maintenance` queue, scheduled by
# beat (`manage.py maintenance` runs both; `make run` starts it).
REAPI_EVICTION_INTERVAL_SECONDS = envint("REAPI_EVICTION_INTERVAL_SECONDS", 600)
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "evict": {
        "task": "reapi.evict",
        "schedule": float(REAPI_EVICTION_INTERVAL_SECONDS),
        "options": {"queue": "maintenance", "expires": float(REAPI_EVICTION_INTERVAL_SECONDS)},
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# --- Remote Asset API (reapi/assets.py) ----------------------------------------------------
# URL prefixes the server may download from for clients, comma-separated (`https://` alone:
# any https URL); empty: any http or https URL. Hosts resolving to loopback, private,
# link-local or unique-local addresses only through a prefix naming the host (reapi/egress.py).
REAPI_ASSET_ALLOWED_URLS = envlist("REAPI_ASSET_ALLOWED_URLS")
try:
    REAPI_ASSET_ALLOWED_PREFIXES = parse_prefixes(REAPI_ASSET_ALLOWED_URLS)
except ValueError as _exc:
    raise SettingError(f"REAPI_ASSET_ALLOWED_URLS: {_exc}") from None
# The largest asset the server downloads, and the most time one download may take.
REAPI_ASSET_MAX_BYTES = envbytes("REAPI_ASSET_MAX_BYTES", "10G")
REAPI_ASSET_TIMEOUT_SECONDS = envint("REAPI_ASSET_TIMEOUT_SECONDS", 600)
# Downloads one server process runs at once (each on a thread with a database connection).
REAPI_ASSET_DOWNLOADS = envint("REAPI_ASSET_DOWNLOADS", 4)
for _name in ("REAPI_ASSET_MAX_BYTES", "REAPI_ASSET_TIMEOUT_SECONDS", "REAPI_ASSET_DOWNLOADS"):
    if globals()[_name] < 1:
        raise SettingError(f"{_name} must be at least 1, not {globals()[_name]}")

# --- Tokens ----------------------------------------------------------------------------------
TOKEN_DEFAULT_EXPIRY_DAYS = envint("TOKEN_DEFAULT_EXPIRY_DAYS", 90)

# --- Remote execution (workers/) ------------------------------------------------------------
# Pools per cluster, `NAME` or `NAME:ARCH`; the first is where actions without platform go.
REAPI_POOLS = {c: envlist(f"REAPI_POOLS_{c.upper()}", "x86-64") for c in CLUSTERS}
# REAPI Action.timeout: longer than the maximum is refused; none gets the default.
REAPI_MAX_ACTION_TIMEOUT = envint("REAPI_MAX_ACTION_TIMEOUT", 3600)
REAPI_DEFAULT_ACTION_TIMEOUT = envint("REAPI_DEFAULT_ACTION_TIMEOUT", 900)
# A running action's lease, renewed by its worker; once it lapses the action is redelivered,
# at most REAPI_MAX_DELIVERIES times in all (a poison action cannot loop).
REAPI_WORKER_LEASE_SECONDS = envint("REAPI_WORKER_LEASE_SECONDS", 30)
REAPI_MAX_DELIVERIES = envint("REAPI_MAX_DELIVERIES", 3)
REAPI_EXEC_DIR = Path(env("REAPI_EXEC_DIR", str(DATA_DIR / "exec")))
# Every action runs in a bubblewrap sandbox (workers/sandbox.py); `off` only on purpose: a worker
# then warns on every action. Actions run as this unprivileged uid/gid when the worker is root.
REAPI_SANDBOX = envbool("REAPI_SANDBOX", True)
REAPI_SANDBOX_UID = envint("REAPI_SANDBOX_UID", 65534)
REAPI_SANDBOX_GID = envint("REAPI_SANDBOX_GID", 65534)
# Limits per action; a pool's options override them (workers/pools.py).
REAPI_SANDBOX_MEMORY = envbytes("REAPI_SANDBOX_MEMORY", "4G")
REAPI_SANDBOX_PIDS = envint("REAPI_SANDBOX_PIDS", 1024)
REAPI_SANDBOX_NOFILE = envint("REAPI_SANDBOX_NOFILE", 4096)
REAPI_SANDBOX_FILE_SIZE = envbytes("REAPI_SANDBOX_FILE_SIZE", "4G")
REAPI_SANDBOX_OUTPUT_BYTES = envbytes("REAPI_SANDBOX_OUTPUT_BYTES", "8G")
# Host directories actions see read-only besides the system ones (a toolchain in /opt), and
# files or directories under those that they must not see (secrets kept in /etc).
REAPI_SANDBOX_READ_ONLY = envlist("REAPI_SANDBOX_READ_ONLY")
REAPI_SANDBOX_HIDE = envlist("REAPI_SANDBOX_HIDE")

# --- Celery ----------------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", "filesystem://")
# Redis/SQS redeliver an unacknowledged task after this: longer than the longest action.
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"visibility_timeout": REAPI_MAX_ACTION_TIMEOUT + 1800}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport, made safe for several workers (workers/fs_broker.py).
    CELERY_BROKER_TRANSPORT = "workers.fs_broker:Transport"
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        {
            "data_folder_in": str(_broker_dir / "queue"),
            "data_folder_out": str(_broker_dir / "queue"),
            "processed_folder": str(_broker_dir / "processed"),
            "control_folder": str(_broker_dir / "control"),
            "store_processed": False,
            "polling_interval": 0.05,
        }
    )
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True  # the work is safe to repeat (workers/execution.py)
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = REAPI_MAX_ACTION_TIMEOUT + 600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Production ------------------------------------------------------------------------------
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = envbool("DJANGO_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = envint("DJANGO_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    CSRF_TRUSTED_ORIGINS = envlist("DJANGO_CSRF_TRUSTED_ORIGINS")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
}

from portal.settings_portal import *  # noqa: E402,F403  (login, API, OIDC on gRPC, usage)
