"""Settings for Realtime Platform: one module, everything that varies by deploy from the environment.

Every variable has a default that runs with nothing installed (SQLite, local-memory cache, the
in-memory channel layer, a Celery broker that needs no server, the built-in OpenAI emulator).
Setting DATABASE_URL, REDIS_URL or OPENAI_API_KEY switches to PostgreSQL, Redis or the real API.
`.env.example` lists every variable; README's configuration table explains them.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from realtime_platform.env import (
    database_from_url,
    env_bool,
    env_int,
    env_list,
    env_secret,
    env_str,
    read_dotenv,
)

BASE_DIR = Path(__file__).resolve().parent.parent
if env_bool("RTP_READ_DOTENV", True):  # the test suite turns this off so it is hermetic
    read_dotenv(BASE_DIR / ".env")

VAR_DIR = Path(env_str("RTP_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)
(VAR_DIR / "static").mkdir(exist_ok=True)

# --- Core -------------------------------------------------------------------------------------
DEBUG = env_bool("DJANGO_DEBUG", False)
DEV_SECRET_KEY = "django-insecure-development-only-key-never-use-in-production"
SECRET_KEY = env_secret("DJANGO_SECRET_KEY", DEV_SECRET_KEY)
if not DEBUG and SECRET_KEY == DEV_SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is unset while DJANGO_DEBUG is off. Generate one with "
        "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`."
    )

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "realtime_platform",
    "tenants",
    "tokens",
    "usage",
    "audit",
    "relay",
    "upstream",
]

MIDDLEWARE = [
    "realtime_platform.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "realtime_platform.middleware.ApiErrorMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "realtime_platform.console_auth.ConsoleSessionMiddleware",  # idle/absolute timeouts, console headers
]

ROOT_URLCONF = "realtime_platform.urls"
ASGI_APPLICATION = "realtime_platform.asgi.application"
WSGI_APPLICATION = "realtime_platform.wsgi.application"

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

# --- Database ---------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "db.sqlite3",
        "OPTIONS": {
            # IMMEDIATE takes the write lock at BEGIN, so the web process and the Celery worker
            # queue for it instead of failing with "database is locked" on upgrade.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}
if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
IS_POSTGRES = str(DATABASES["default"]["ENGINE"]).endswith("postgresql")
DATABASE_POOL_MAX = env_int("DATABASE_POOL_MAX", 20)
if IS_POSTGRES and DATABASE_POOL_MAX > 0:
    # Under ASGI every request runs its sync code in a fresh thread context, so persistent
    # per-thread connections (CONN_MAX_AGE) would leak one connection per request. A psycopg pool
    # hands connections back at the end of each request instead (Django's advice for ASGI).
    # Django's backend, plus a sweep of the whole pool when a dead connection turns up
    # (realtime_platform/postgresql/base.py).
    DATABASES["default"]["ENGINE"] = "realtime_platform.postgresql"
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # With a pool this makes Django pass psycopg's check to it: each connection is tested as it
    # leaves the pool (one empty query) and replaced if the server closed it meanwhile (restart,
    # failover, idle timeout, pg_terminate_backend). Without it every dead pooled connection failed
    # one request with a 500, or a relay session's metering and end (tests/gates/test_faults.py).
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_MAX,
        "timeout": env_int("DATABASE_POOL_TIMEOUT", 10),
    }
elif DATABASE_URL:
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, rate limits, channel layer, Celery broker ----------------------------------
REDIS_URL = env_str("REDIS_URL")
CACHES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "rtp"}
}
CHANNEL_LAYERS: dict[str, dict[str, Any]] = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "rtp",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s socket timeout, exactly channels_redis's 5 s blocking
                # pop: a busy loop turned idle pops into "Timeout reading" errors that delayed the
                # kill switch. Reads get twice the pop's time; connecting stays quick.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 10, "socket_connect_timeout": 2}],
                "prefix": "rtp:channels",
                "capacity": 1000,
                "expiry": 30,
            },
        }
    }

# --- Celery -----------------------------------------------------------------------------------
# Embedded default: kombu's filesystem transport, a broker that is just a folder, so `make run`
# runs a real worker and beat next to daphne with no server. With REDIS_URL, Redis is the broker.
CELERY_EMBEDDED_BROKER_DIR = VAR_DIR / "celery-broker"
CELERY_BROKER_URL = REDIS_URL or "filesystem://"
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"visibility_timeout": 3600}
if not REDIS_URL:
    for sub in ("queue", "processed", "control"):
        (CELERY_EMBEDDED_BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_EMBEDDED_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_EMBEDDED_BROKER_DIR / "queue"),
        "processed_folder": str(CELERY_EMBEDDED_BROKER_DIR / "processed"),
        "control_folder": str(CELERY_EMBEDDED_BROKER_DIR / "control"),
        "store_processed": False,
        # The folder is polled; each poll takes about one message, so poll often (a directory
        # listing is cheap) to keep up with every beat entry plus the tasks requests enqueue.
        "polling_interval": 0.2,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True  # tasks are idempotent; a worker lost mid-task means the task runs again
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# CELERY_BEAT_SCHEDULE: see "Background jobs" at the end of this file.

# --- Upstream (OpenAI) ------------------------------------------------------------------------
OPENAI_API_KEY = env_secret("OPENAI_API_KEY")
# Without a key, the platform talks to its built-in OpenAI emulator (upstream/emulator/), mounted
# under UPSTREAM_EMULATOR_PREFIX in this same server, so everything works offline.
UPSTREAM_EMULATOR = not OPENAI_API_KEY
UPSTREAM_EMULATOR_PREFIX = "/_emulator"
PORT = env_int("PORT", 8000)
OPENAI_BASE_URL = env_str(
    "OPENAI_BASE_URL",
    "https://api.openai.com/v1"
    if OPENAI_API_KEY
    else f"http://127.0.0.1:{PORT}{UPSTREAM_EMULATOR_PREFIX}/v1",
)
UPSTREAM_CONNECT_TIMEOUT = float(env_str("UPSTREAM_CONNECT_TIMEOUT", "5"))
UPSTREAM_READ_TIMEOUT = float(env_str("UPSTREAM_READ_TIMEOUT", "20"))
UPSTREAM_MAX_RETRIES = env_int("UPSTREAM_MAX_RETRIES", 2)
# A retry-after longer than this (seconds) is handed back to the caller instead of waited out.
UPSTREAM_RETRY_MAX_WAIT = float(env_str("UPSTREAM_RETRY_MAX_WAIT", "10"))
# The key the built-in emulator accepts and the platform sends it when OPENAI_API_KEY is unset.
# Derived from SECRET_KEY, so every process of one deployment agrees on it without configuration.
UPSTREAM_EMULATOR_API_KEY = env_secret("RTP_EMULATOR_API_KEY", "") or (
    "sk-emulator-" + hashlib.sha256(f"upstream-emulator:{SECRET_KEY}".encode()).hexdigest()[:40]
)

# --- Secrets at rest --------------------------------------------------------------------------
# Fernet keys (comma-separated, newest first) that encrypt tenants' own OpenAI keys. Unset: one
# key derived from SECRET_KEY (fine for the embedded run; `check --deploy` warns).
FIELD_ENCRYPTION_KEYS = env_list("RTP_FIELD_ENCRYPTION_KEYS", [])
# HMAC key for API-key and relay-token fingerprints. Changing it invalidates every issued key.
API_KEY_PEPPER = env_secret("RTP_API_KEY_PEPPER", "")
# Key that signs audit chain checkpoints (HMAC-SHA256).
AUDIT_SIGNING_KEY = env_secret("RTP_AUDIT_SIGNING_KEY", "")

# --- Metering ---------------------------------------------------------------------------------
PRICE_TABLE_FILE = env_str("RTP_PRICE_TABLE_FILE", "")  # JSON price overrides; see usage/pricing.py

# --- Limits -----------------------------------------------------------------------------------
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("RTP_MAX_REQUEST_BYTES", 256 * 1024)
API_KEY_LAST_USED_RESOLUTION_SECONDS = 60  # last_used_at is written at most once a minute per key

# --- Auth and console -------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/console/login/"
LOGIN_REDIRECT_URL = "/console/"
SESSION_COOKIE_AGE = env_int("DJANGO_SESSION_COOKIE_AGE", 8 * 3600)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# Console sessions end after this long without a request, and SESSION_COOKIE_AGE after sign-in
# however active they are (enforced server-side by ConsoleSessionMiddleware, not just by the cookie).
CONSOLE_IDLE_TIMEOUT_SECONDS = env_int("RTP_CONSOLE_IDLE_TIMEOUT", 30 * 60)
CONSOLE_ABSOLUTE_TIMEOUT_SECONDS = SESSION_COOKIE_AGE
# Failed sign-ins allowed per window (django-ratelimit rates) before further attempts are refused.
CONSOLE_LOGIN_FAILURES_PER_USERNAME = env_str("RTP_CONSOLE_LOGIN_FAILURES_PER_USERNAME", "5/15m")
CONSOLE_LOGIN_FAILURES_PER_IP = env_str("RTP_CONSOLE_LOGIN_FAILURES_PER_IP", "30/15m")
for _rate in (CONSOLE_LOGIN_FAILURES_PER_USERNAME, CONSOLE_LOGIN_FAILURES_PER_IP):
    if not re.fullmatch(r"[1-9]\d*/\d*[smhd]", _rate):
        raise ImproperlyConfigured(f"Login throttle rate {_rate!r} must look like '5/15m' (count/period).")

# --- HTTPS and deploy hygiene (`manage.py check --deploy` passes with DEBUG off) -------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_BEHIND_PROXY") else None
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain HTTP
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SILENCED_SYSTEM_CHECKS = ["security.W008"] if env_bool("DJANGO_BEHIND_TLS_PROXY_REDIRECTS") else []

# --- Static files -----------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG

# --- i18n -------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- DRF and OpenAPI --------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.auth.HasScope"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "realtime_platform.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Realtime Platform API",
    "DESCRIPTION": "OpenAI-compatible realtime client secrets and the tenant management API.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # 3.1: the OpenAI request schema (pydantic) uses JSON Schema nulls, which 3.0 cannot express.
    "OAS_VERSION": "3.1.0",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "realtime_platform.openapi.add_error_responses",
    ],
}

# --- Logging ----------------------------------------------------------------------------------
LOG_LEVEL = env_str("DJANGO_LOG_LEVEL", "INFO").upper()
LOG_FORMAT = env_str("DJANGO_LOG_FORMAT", "text" if DEBUG else "json")
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured("DJANGO_LOG_FORMAT must be 'text' or 'json'")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "realtime_platform.logging.RequestIdFilter"}},
    "formatters": {
        "text": {
            "()": "realtime_platform.logging.RedactingTextFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
        },
        "json": {"()": "realtime_platform.logging.RedactingJsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": sys.stderr,
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "daphne": {"level": "WARNING" if LOG_LEVEL == "INFO" else LOG_LEVEL},
    },
}

# --- Relay (/v1/realtime) -----------------------------------------------------------------------
# README "Relay" explains each; relay/core.py RelayLimits holds the same defaults.
RELAY_MAX_EVENT_BYTES = env_int("RTP_RELAY_MAX_EVENT_BYTES", 1024 * 1024)  # bigger: error event, dropped
RELAY_MAX_FRAME_BYTES = env_int("RTP_RELAY_MAX_FRAME_BYTES", 2 * 1024 * 1024)  # bigger: error, close 1009
RELAY_SLOW_CLIENT_SECONDS = float(env_str("RTP_RELAY_SLOW_CLIENT_SECONDS", "5"))  # not reading: close 1013
RELAY_HEARTBEAT_SECONDS = float(env_str("RTP_RELAY_HEARTBEAT_SECONDS", "10"))  # last_seen_at, quota checks
RELAY_INBOUND_QUEUE = env_int("RTP_RELAY_INBOUND_QUEUE", 32)  # received frames waiting before reads pause
# Keepalive pings to clients (dead peers are dropped within interval + timeout + 2 s) and the
# servers' own message-size limit, set above RELAY_MAX_FRAME_BYTES so the relay's 1009 answers first.
RELAY_PING_INTERVAL = float(env_str("RTP_RELAY_PING_INTERVAL", "10"))
RELAY_PING_TIMEOUT = float(env_str("RTP_RELAY_PING_TIMEOUT", "15"))
RELAY_SERVER_MAX_MESSAGE_BYTES = 2 * RELAY_MAX_FRAME_BYTES
ASGI_SERVER = env_str("RTP_ASGI_SERVER", "daphne")  # `manage.py serve`: daphne or uvicorn
if ASGI_SERVER not in {"daphne", "uvicorn"}:
    raise ImproperlyConfigured("RTP_ASGI_SERVER must be 'daphne' or 'uvicorn'")

# --- Background jobs: beat schedule, sweeps, rollups, alerts, retention ------------------------
# The schedule is these settings, not django-celery-beat: it is reviewed with the code, needs no
# extra tables or admin, and runs unchanged under the embedded beat (`make run`). Operators tune
# intervals with RTP_BEAT_INTERVALS="rollup-usage=300,purge-usage-events=7200" (seconds); `0`
# disables an entry. Every entry's message expires after one interval, so a stopped worker
# does not come back to a backlog of identical sweeps. Two beats are harmless: jobs take a lock.
BEAT_JOBS: dict[str, tuple[str, int]] = {
    "expire-client-secrets": ("tokens.tasks.client_secret_expire_sweep", 30),
    "sweep-stale-sessions": ("relay.tasks.realtime_session_stale_sweep", 60),
    "rollup-usage": ("usage.tasks.usage_rollup_run", 60),
    "evaluate-quota-alerts": ("usage.tasks.quota_alerts_evaluate", 60),
    "deliver-alerts": ("usage.tasks.alert_deliveries_send", 30),
    "purge-usage-events": ("usage.tasks.usage_events_purge", 3600),
    "purge-quota-counters": ("usage.tasks.quota_counters_purge", 6 * 3600),
    "purge-idempotency-keys": ("tokens.tasks.idempotency_purge", 3600),
    # Signed checkpoints bound how much of a chain's tail could be rewritten unnoticed.
    "audit-checkpoint-heads": ("audit.tasks.audit_checkpoint_heads", 600),
    "audit-verify-chains": ("audit.tasks.audit_verify_chains", 6 * 3600),
    "audit-purge-expired": ("audit.tasks.audit_purge_expired", 24 * 3600),
}


def _beat_intervals(raw: str) -> dict[str, int]:
    intervals: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, seconds = item.partition("=")
        if name.strip() not in BEAT_JOBS or not seconds.strip().isdigit():
            raise ImproperlyConfigured(
                f"RTP_BEAT_INTERVALS: {item!r} is not <job>=<seconds> with a job among {', '.join(BEAT_JOBS)}"
            )
        intervals[name.strip()] = int(seconds)
    return intervals


_BEAT_OVERRIDES = _beat_intervals(env_str("RTP_BEAT_INTERVALS"))
CELERY_BEAT_SCHEDULE = {
    name: {"task": task, "schedule": float(seconds), "options": {"expires": float(seconds)}}
    for name, (task, default) in BEAT_JOBS.items()
    if (seconds := _BEAT_OVERRIDES.get(name, default)) > 0
}

# A relay session whose process has not touched last_seen_at for this long is ended as "stale"
# and its concurrency slot released; the relay touches it every RELAY_HEARTBEAT_SECONDS (above).
RELAY_SESSION_STALE_SECONDS = env_int("RTP_RELAY_STALE_SECONDS", 120)
if RELAY_SESSION_STALE_SECONDS < 2 * RELAY_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        f"RTP_RELAY_STALE_SECONDS must be at least two relay heartbeats ({2 * RELAY_HEARTBEAT_SECONDS:g} s)"
    )
# work_mem of a rollup transaction on PostgreSQL (its GROUP BY sorts up to a batch of events).
ROLLUP_WORK_MEM = env_str("RTP_ROLLUP_WORK_MEM", "64MB")
# Quota counter rows (and alert records) of periods that ended longer ago than this are deleted;
# history lives on in the rollups. The concurrency counter has no period and is never deleted.
QUOTA_COUNTER_RETENTION_DAYS = env_int("RTP_QUOTA_COUNTER_RETENTION_DAYS", 400)

# Quota threshold alerts: webhook (HMAC-SHA256 signed) and email, retried with backoff.
ALERT_WEBHOOK_TIMEOUT = float(env_str("RTP_ALERT_WEBHOOK_TIMEOUT", "5"))
ALERT_MAX_ATTEMPTS = env_int("RTP_ALERT_MAX_ATTEMPTS", 8)
ALERT_RETRY_BASE_SECONDS = env_int("RTP_ALERT_RETRY_BASE_SECONDS", 60)
ALERT_RETRY_MAX_SECONDS = env_int("RTP_ALERT_RETRY_MAX_SECONDS", 3600)
# Tenant-supplied URLs are fetched by the platform: refuse plain HTTP and private, loopback and
# link-local addresses (SSRF) unless told otherwise (DEBUG allows both, for local receivers).
ALERT_WEBHOOK_REQUIRE_HTTPS = env_bool("RTP_ALERT_WEBHOOK_REQUIRE_HTTPS", not DEBUG)
ALERT_WEBHOOK_ALLOW_PRIVATE = env_bool("RTP_ALERT_WEBHOOK_ALLOW_PRIVATE", DEBUG)

# Email (alerts): SMTP when DJANGO_EMAIL_HOST is set, otherwise printed to the worker's console.
EMAIL_HOST = env_str("DJANGO_EMAIL_HOST")
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_PORT = env_int("DJANGO_EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("DJANGO_EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_secret("DJANGO_EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("DJANGO_EMAIL_USE_TLS", True)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env_str("DJANGO_DEFAULT_FROM_EMAIL", "Realtime Platform <alerts@localhost>")

# --- Client-secret issuance (tokens/) ---------------------------------------------------------
# Per-API-key requests per minute on POST /v1/realtime/client_secrets, on top of the tenant's
# requests_per_minute (plan or override). Unset: a key may use the tenant's whole rate.
RATE_LIMIT_PER_KEY_PER_MINUTE: int | None = env_int("RTP_RATE_LIMIT_PER_KEY_PER_MINUTE", 0) or None
# Redis (the rate-limit store) down: answer 503 at once for this long before trying it again.
RATE_LIMIT_BREAKER_SECONDS = env_int("RTP_RATE_LIMIT_BREAKER_SECONDS", 2)
# An in-flight Idempotency-Key whose holder died is taken over after this long (longer than the
# worst upstream call: connect + read timeouts times the retries).
IDEMPOTENCY_LEASE_SECONDS = env_int("RTP_IDEMPOTENCY_LEASE_SECONDS", 120)
# Serve POST /v1/realtime/client_secrets from the lean ASGI path in tokens/asgi.py (see README,
# "Serving the hot path"); false: the ordinary Django/DRF view serves it.
ISSUANCE_FAST_PATH = env_bool("RTP_ISSUANCE_FAST_PATH", True)
# Threads (each with its own database connection) doing the fast path's database work.
ISSUANCE_DB_THREADS = env_int("RTP_ISSUANCE_DB_THREADS", 4)
# --- Audit trail ------------------------------------------------------------------------------
# Keys that signed older checkpoints (comma-separated), kept only to verify them after a rotation.
AUDIT_SIGNING_KEYS_PREVIOUS = env_list("RTP_AUDIT_SIGNING_KEYS_PREVIOUS", [])
# Retention of the platform chain (tenants' chains follow Tenant.audit_retention_days), and the
# shortest retention a tenant may set.
AUDIT_PLATFORM_RETENTION_DAYS = env_int("RTP_AUDIT_PLATFORM_RETENTION_DAYS", 365 * 7)
AUDIT_RETENTION_MIN_DAYS = env_int("RTP_AUDIT_RETENTION_MIN_DAYS", 30)
# Prepare the recorder's statement once per connection (PostgreSQL): about twice the appends a
# database core can take. Leave off behind a transaction-pooling PgBouncer older than 1.21.
AUDIT_PREPARED_STATEMENTS = env_bool("RTP_AUDIT_PREPARED_STATEMENTS", False)
