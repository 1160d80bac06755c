"""Settings, all from the environment (docs/contract.md §3). See README "Configuration" for every variable.

Every variable is read through `cryptomon.config` (never `os.environ` here), which records it in
`VARIABLES_READ`: the one list of what configures cryptomon, checked against docker-compose.yml.
"""

from __future__ import annotations

import secrets
import warnings
from datetime import timedelta
from pathlib import Path

from cryptomon.config import (
    ConfigurationError,
    check_url,
    check_url_list,
    database_from_url,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_ports,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("CRYPTOMON_VAR_DIR", "") or BASE_DIR / "var")


def _embedded_urls() -> dict[str, str]:
    """URLs a previous command wrote for the embedded servers (docs/contract.md §3), if any."""
    env_file = VAR_DIR / "embedded.env"
    if not env_file.exists():
        return {}
    pairs = (line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


_EMBEDDED = {} if env_str("DATABASE_URL", "") else _embedded_urls()


def _server_url(name: str) -> str | None:
    return env_str(name, "") or _EMBEDDED.get(name)


DEBUG = env_bool("DEBUG", False)
EMBEDDED = bool(env_str("CRYPTOMON_EMBEDDED", "")) or not env_str("DATABASE_URL", "")


def _secret_key() -> str:
    if env_str("SECRET_KEY", ""):
        return env_str("SECRET_KEY")
    if not EMBEDDED:
        raise ConfigurationError("SECRET_KEY is not set (required when DATABASE_URL is configured)")
    # Embedded default only: a random key kept under var/, never in the repository.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
# The public origin(s) behind the TLS proxy, e.g. https://cryptomon.example.com (logins fail CSRF without)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "cryptomon",
    "collector",
    "metrics",
    "alerts",
    "notifications",
    "gateway",
    "axes",  # failed sign-in throttling (docs/security.md)
]

MIDDLEWARE = [
    "cryptomon.exporter.request_metrics",  # /metrics of the web process (docs/operations.md "Observe")
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files under daphne (docs/dashboard.md)
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # turns a lockout into cryptomon.lockout's 429
]

ROOT_URLCONF = "cryptomon.urls"
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
WSGI_APPLICATION = None
ASGI_APPLICATION = "cryptomon.asgi.application"

# --- databases (docs/contract.md §3): metadata on "default", candles/metrics/history/outbox on "timeseries"
_database_url = _server_url("DATABASE_URL")
if _database_url:
    _timeseries_url = env_str("TIMESERIES_DATABASE_URL", "") or _database_url
    DATABASES = {
        "default": database_from_url("DATABASE_URL", _database_url),
        "timeseries": database_from_url("TIMESERIES_DATABASE_URL", _timeseries_url),
    }
    TIMESERIES_SHARED = _timeseries_url == _database_url
    if TIMESERIES_SHARED:
        # One database: migrations run once on "default"; tests mirror the alias.
        DATABASES["timeseries"]["TEST"] = {"MIRROR": "default"}
else:
    # No server configured and none started: commands that need no database still run (backtest --input).
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.dummy"},
        "timeseries": {"ENGINE": "django.db.backends.dummy"},
    }
    TIMESERIES_SHARED = True
DATABASE_ROUTERS = ["cryptomon.routers.TimeseriesRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# One server, or a cluster's servers comma-separated (clients fail over between them; docs/operations.md).
NATS_URL = check_url_list("NATS_URL", _server_url("NATS_URL") or "nats://127.0.0.1:4222", {"nats", "tls"})
REDIS_URL = check_url(
    "REDIS_URL", _server_url("REDIS_URL") or "redis://127.0.0.1:6379/0", {"redis", "rediss"}
)

# Channel layer chosen by measurement (docs/performance.md "Realtime gateway"): pub/sub publishes a group
# message once per process instead of once per socket and never drops silently; each socket's own bounded
# send buffer (WS_SEND_BUFFER, close 4008) is the bound. CHANNEL_LAYER=core selects the list-based layer.
CHANNEL_LAYER = env_str("CHANNEL_LAYER", "pubsub")
if CHANNEL_LAYER not in {"pubsub", "core"}:
    raise ConfigurationError(f"CHANNEL_LAYER must be pubsub or core (got {CHANNEL_LAYER!r})")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer"
        if CHANNEL_LAYER == "pubsub"
        else "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}

# --- Celery (notifications, retention)
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Binance (docs/contract.md §4)
BINANCE_REST_URL = check_url(
    "BINANCE_REST_URL", env_str("BINANCE_REST_URL", "https://fapi.binance.com"), {"http", "https"}
)
BINANCE_WS_URL = check_url(
    "BINANCE_WS_URL", env_str("BINANCE_WS_URL", "wss://fstream.binance.com/market"), {"ws", "wss"}
)
BINANCE_INCLUDE_TRADIFI = env_bool("BINANCE_INCLUDE_TRADIFI", False)
BINANCE_STREAMS_PER_CONNECTION = env_int("BINANCE_STREAMS_PER_CONNECTION", 200, minimum=1)
BINANCE_WATCHDOG_SECONDS = env_float("BINANCE_WATCHDOG_SECONDS", 90.0, minimum=0.1)
BINANCE_MAX_CONNECTION_AGE_SECONDS = env_float("BINANCE_MAX_CONNECTION_AGE_SECONDS", 23 * 3600, minimum=1)
BINANCE_BACKOFF_CAP_SECONDS = env_float("BINANCE_BACKOFF_CAP_SECONDS", 60.0, minimum=0.01)
BINANCE_BACKOFF_BASE_SECONDS = env_float("BINANCE_BACKOFF_BASE_SECONDS", 1.0, minimum=0.001)
COLLECTOR_HOLE_SCAN_SECONDS = env_float("COLLECTOR_HOLE_SCAN_SECONDS", 600.0, minimum=0.1)
COLLECTOR_UNIVERSE_REFRESH_SECONDS = env_float("COLLECTOR_UNIVERSE_REFRESH_SECONDS", 300.0, minimum=0.1)
COLLECTOR_BUFFER_LIMIT = env_int("COLLECTOR_BUFFER_LIMIT", 500_000, minimum=1)

# --- Prometheus /metrics (docs/operations.md "Observe"): each process its own port; 0 = none. A sharded
# worker (--shard k/N) listens on port + k. run_monitor turns them on (MONITOR_METRICS_PORT).
COLLECTOR_METRICS_PORT = env_int("COLLECTOR_METRICS_PORT", 0, minimum=0)
METRICS_METRICS_PORT = env_int("METRICS_METRICS_PORT", 0, minimum=0)  # the metrics engine (run_metrics)
ALERTS_METRICS_PORT = env_int("ALERTS_METRICS_PORT", 0, minimum=0)
GATEWAY_METRICS_PORT = env_int("GATEWAY_METRICS_PORT", 0, minimum=0)
WEB_METRICS_PORT = env_int("WEB_METRICS_PORT", 0, minimum=0)
CELERY_METRICS_PORT = env_int("CELERY_METRICS_PORT", 0, minimum=0)
METRICS_HOST = env_str("METRICS_HOST", "127.0.0.1")  # 0.0.0.0 in containers, for the Prometheus service
# run_monitor's first metrics port: collector, metrics, alerts, gateway, web, celery on it and the next five
# (a process's own *_METRICS_PORT wins); 0 = no /metrics under run_monitor.
MONITOR_METRICS_PORT = env_int("MONITOR_METRICS_PORT", 9310, minimum=0)
# Derivatives streams and polls (docs/collector.md "Derivatives"); silence per stream (wall seconds)
COLLECTOR_DERIVATIVES = env_bool("COLLECTOR_DERIVATIVES", True)
COLLECTOR_OI_WEIGHT_CEILING = env_int("COLLECTOR_OI_WEIGHT_CEILING", 1200, minimum=1)
COLLECTOR_FUNDING_INFO_SECONDS = env_float("COLLECTOR_FUNDING_INFO_SECONDS", 3600.0, minimum=1.0)
COLLECTOR_KLINE_SILENCE_SECONDS = env_float("COLLECTOR_KLINE_SILENCE_SECONDS", 75.0, minimum=0.1)
COLLECTOR_MARK_SILENCE_SECONDS = env_float("COLLECTOR_MARK_SILENCE_SECONDS", 10.0, minimum=0.1)

# --- NATS / JetStream (docs/contract.md §5)
NATS_STREAM_MAX_BYTES = env_int("NATS_STREAM_MAX_BYTES", 1024**3, minimum=1024 * 1024)
NATS_RECONNECT_WAIT_SECONDS = env_float("NATS_RECONNECT_WAIT_SECONDS", 2.0, minimum=0.01)
# Copies JetStream keeps of each stream: 1 on one server, 3 on a 3-node cluster (docs/operations.md "Scale").
NATS_STREAM_REPLICAS = env_int("NATS_STREAM_REPLICAS", 1, minimum=1)
if NATS_STREAM_REPLICAS > 5:  # JetStream's own limit
    raise ConfigurationError(f"NATS_STREAM_REPLICAS must be at most 5 (got {NATS_STREAM_REPLICAS})")

# --- metrics and alerts (docs/contract.md §7, §8)
METRICS_LATE_AFTER_SECONDS = env_float("METRICS_LATE_AFTER_SECONDS", 180.0, minimum=0)
METRICS_GAP_TIMEOUT_SECONDS = env_float("METRICS_GAP_TIMEOUT_SECONDS", 900.0, minimum=0.1)
ALERTS_NOTIFY_LATE = env_bool("ALERTS_NOTIFY_LATE", False)
ALERTS_MAX_PERSONAL_RULES = env_int("ALERTS_MAX_PERSONAL_RULES", 50, minimum=0)
ALERTS_RULE_RELOAD_SECONDS = env_float("ALERTS_RULE_RELOAD_SECONDS", 2.0, minimum=0.1)
ALERTS_UNIVERSE_REFRESH_SECONDS = env_float("ALERTS_UNIVERSE_REFRESH_SECONDS", 60.0, minimum=0.1)
# A bar whose handling fails this many deliveries is dead-lettered (docs/alerts.md "Failures").
ALERTS_MAX_DELIVERIES = env_int("ALERTS_MAX_DELIVERIES", 5, minimum=1)
ALERTS_REDELIVERY_DELAY_SECONDS = env_float("ALERTS_REDELIVERY_DELAY_SECONDS", 5.0, minimum=0.0)

# --- notifications (docs/notifications.md). Secrets (keys, tokens) come only from the environment.
NOTIFICATIONS_KEY = env_str("NOTIFICATIONS_KEY", "")  # Fernet key(s), comma-separated for rotation
NOTIFICATIONS_GROUP_SECONDS = env_float("NOTIFICATIONS_GROUP_SECONDS", 10.0, minimum=0)
NOTIFICATIONS_RETRY_BASE_SECONDS = env_float("NOTIFICATIONS_RETRY_BASE_SECONDS", 5.0, minimum=0.001)
NOTIFICATIONS_RETRY_CAP_SECONDS = env_float("NOTIFICATIONS_RETRY_CAP_SECONDS", 900.0, minimum=0.001)
NOTIFICATIONS_RETRY_AFTER_SCALE = env_float("NOTIFICATIONS_RETRY_AFTER_SCALE", 1.0, minimum=0)
NOTIFICATIONS_MAX_ATTEMPTS = env_int("NOTIFICATIONS_MAX_ATTEMPTS", 12, minimum=1)
# One wall-clock deadline per outgoing request: connect + TLS + request + headers + body (docs/security.md).
NOTIFICATIONS_HTTP_TIMEOUT_SECONDS = env_float("NOTIFICATIONS_HTTP_TIMEOUT_SECONDS", 10.0, minimum=0.1)
NOTIFICATIONS_MAX_RESPONSE_BYTES = env_int("NOTIFICATIONS_MAX_RESPONSE_BYTES", 65536, minimum=1024)
NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = env_bool("NOTIFICATIONS_ALLOW_PRIVATE_TARGETS", False)
# Users' URLs may use ports 80 and 443, and these (e.g. "8443,8080").
NOTIFICATIONS_ALLOWED_EXTRA_PORTS = env_ports("NOTIFICATIONS_ALLOWED_EXTRA_PORTS")
# A remote's Retry-After (header or JSON) is cut to this; longer or absurd wishes retry at the cap.
NOTIFICATIONS_RETRY_AFTER_MAX_SECONDS = env_float("NOTIFICATIONS_RETRY_AFTER_MAX_SECONDS", 3600.0, minimum=0)
NOTIFICATIONS_STUCK_SECONDS = env_float("NOTIFICATIONS_STUCK_SECONDS", 120.0, minimum=0.01)
# A channel's send in flight holds its claim until the deadline plus this margin has passed since its
# last sign of life; only then may the stuck sweep hand its deliveries to another worker.
NOTIFICATIONS_CLAIM_MARGIN_SECONDS = env_float("NOTIFICATIONS_CLAIM_MARGIN_SECONDS", 30.0, minimum=0)
# Celery time limits of the delivery tasks (flush_channel, send_operator_message). The prefork pool
# enforces them; every pool gets the soft one from flush_channel itself, which starts no send it could
# not finish before it.
NOTIFICATIONS_TASK_SOFT_TIME_LIMIT_SECONDS = env_float(
    "NOTIFICATIONS_TASK_SOFT_TIME_LIMIT_SECONDS", 120.0, minimum=1
)
NOTIFICATIONS_TASK_TIME_LIMIT_SECONDS = env_float("NOTIFICATIONS_TASK_TIME_LIMIT_SECONDS", 150.0, minimum=1)
if NOTIFICATIONS_TASK_SOFT_TIME_LIMIT_SECONDS <= NOTIFICATIONS_HTTP_TIMEOUT_SECONDS:
    raise ConfigurationError(
        "NOTIFICATIONS_TASK_SOFT_TIME_LIMIT_SECONDS must be longer than NOTIFICATIONS_HTTP_TIMEOUT_SECONDS"
    )
if NOTIFICATIONS_TASK_TIME_LIMIT_SECONDS <= NOTIFICATIONS_TASK_SOFT_TIME_LIMIT_SECONDS:
    raise ConfigurationError(
        "NOTIFICATIONS_TASK_TIME_LIMIT_SECONDS must be longer than NOTIFICATIONS_TASK_SOFT_TIME_LIMIT_SECONDS"
    )
NOTIFICATIONS_REQUEUE_INTERVAL_SECONDS = env_float("NOTIFICATIONS_REQUEUE_INTERVAL_SECONDS", 60.0, minimum=1)
TELEGRAM_API_URL = check_url(
    "TELEGRAM_API_URL", env_str("TELEGRAM_API_URL", "https://api.telegram.org"), {"http", "https"}
)
TELEGRAM_BOT_TOKEN = env_str("TELEGRAM_BOT_TOKEN", "")
# Self-service Telegram (docs/notifications.md): the bot's @username for the t.me deep link; a public
# webhook URL (empty: the run_telegram_bot worker long-polls getUpdates) and its secret token header.
TELEGRAM_BOT_USERNAME = env_str("TELEGRAM_BOT_USERNAME", "").lstrip("@")
TELEGRAM_WEBHOOK_URL = env_str("TELEGRAM_WEBHOOK_URL", "")
TELEGRAM_WEBHOOK_SECRET = env_str("TELEGRAM_WEBHOOK_SECRET", "")
TELEGRAM_POLL_TIMEOUT_SECONDS = env_int("TELEGRAM_POLL_TIMEOUT_SECONDS", 30, minimum=0)
TELEGRAM_LINK_TTL_SECONDS = env_int("TELEGRAM_LINK_TTL_SECONDS", 600, minimum=10)
NOTIFICATIONS_MAX_CHANNELS_PER_USER = env_int("NOTIFICATIONS_MAX_CHANNELS_PER_USER", 10, minimum=1)
NOTIFICATIONS_EMAIL_VERIFY_MAX_AGE_SECONDS = env_int(
    "NOTIFICATIONS_EMAIL_VERIFY_MAX_AGE_SECONDS", 3 * 86400, minimum=60
)
SIGNUP_ENABLED = env_bool("SIGNUP_ENABLED", True)
SIGNUP_RATE_LIMIT_PER_HOUR = env_int("SIGNUP_RATE_LIMIT_PER_HOUR", 20, minimum=1)  # per client address
# Send test, Connect Telegram and Add channel, per user: each can make the server send a request or a mail.
NOTIFICATIONS_ACTIONS_PER_MINUTE = env_int("NOTIFICATIONS_ACTIONS_PER_MINUTE", 20, minimum=1)
OPERATOR_WEBHOOK_URL = env_str("OPERATOR_WEBHOOK_URL", "")
OPERATOR_WEBHOOK_SECRET = env_str("OPERATOR_WEBHOOK_SECRET", "")
OPERATOR_DISCORD_URL = env_str("OPERATOR_DISCORD_URL", "")
OPERATOR_SLACK_URL = env_str("OPERATOR_SLACK_URL", "")
OPERATOR_TELEGRAM_CHAT_ID = env_str("OPERATOR_TELEGRAM_CHAT_ID", "")
OPERATOR_EMAIL = env_str("OPERATOR_EMAIL", "")
# operator watchdog (notifications/watchdog.py): what raises an operator alert, checked by Celery beat
OPERATOR_CHECK_SECONDS = env_float("OPERATOR_CHECK_SECONDS", 30.0, minimum=1)
OPERATOR_FEED_STALE_SECONDS = env_float("OPERATOR_FEED_STALE_SECONDS", 120.0, minimum=1)
OPERATOR_CONSUMER_LAG_SECONDS = env_float("OPERATOR_CONSUMER_LAG_SECONDS", 60.0, minimum=1)
OPERATOR_HEARTBEAT_WAIT_SECONDS = env_float("OPERATOR_HEARTBEAT_WAIT_SECONDS", 6.0, minimum=0.1)
OPERATOR_GAP_LOOKBACK_MINUTES = env_int("OPERATOR_GAP_LOOKBACK_MINUTES", 180, minimum=10)
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10.0, minimum=0.1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "cryptomon <alerts@localhost>")

# --- retention (docs/contract.md §3): candles and metrics never below the 2880-minute warm-up
RETENTION_CANDLES_HOURS = max(env_float("RETENTION_CANDLES_HOURS", 50.0), 48.0)
RETENTION_ALERTS_DAYS = env_float("RETENTION_ALERTS_DAYS", 90.0, minimum=1)
RETENTION_BATCH_SIZE = env_int("RETENTION_BATCH_SIZE", 10_000, minimum=1)

# --- realtime (docs/contract.md §10)
ALLOW_ANONYMOUS_DASHBOARD = env_bool("ALLOW_ANONYMOUS_DASHBOARD", False)
WS_MAX_SOCKETS_PER_USER = env_int("WS_MAX_SOCKETS_PER_USER", 5, minimum=1)
# Anonymous sockets (ALLOW_ANONYMOUS_DASHBOARD) per client address, an IPv6 one counted as its /64. Higher
# than per user: an office or a mobile carrier puts many viewers behind one address.
WS_MAX_ANONYMOUS_SOCKETS_PER_ADDRESS = env_int("WS_MAX_ANONYMOUS_SOCKETS_PER_ADDRESS", 20, minimum=1)
# Subscribes per socket (each costs database reads): a token bucket of this burst, refilled per minute.
WS_SUBSCRIBE_BURST = env_int("WS_SUBSCRIBE_BURST", 10, minimum=1)
WS_SUBSCRIBES_PER_MINUTE = env_float("WS_SUBSCRIBES_PER_MINUTE", 30.0, minimum=0.01)
WS_SEND_BUFFER = env_int("WS_SEND_BUFFER", 1000, minimum=1)
WS_SOCKET_TTL_SECONDS = env_float("WS_SOCKET_TTL_SECONDS", 60.0, minimum=1)
WS_AUDIENCE_REFRESH_SECONDS = env_float("WS_AUDIENCE_REFRESH_SECONDS", 30.0, minimum=0)
WS_RESYNC_JITTER_SECONDS = env_float("WS_RESYNC_JITTER_SECONDS", 1.0, minimum=0)
# Alert frames one web process sends per second at most, over all its sockets (docs/gateway.md): while alerts
# keep coming, those arriving within sockets/budget seconds (at most 0.25 s) of the last go out together.
WS_ALERT_FRAMES_PER_SECOND = env_float("WS_ALERT_FRAMES_PER_SECOND", 5000.0, minimum=1)
GATEWAY_TICK_SECONDS = env_float(
    "GATEWAY_TICK_SECONDS", 1.0, minimum=0.05
)  # market/status interval; §10: 1 s
FEED_STALE_SECONDS = env_float("FEED_STALE_SECONDS", 15.0, minimum=1)  # 3 missed collector heartbeats
FEED_STATUS_TTL_SECONDS = env_float("FEED_STATUS_TTL_SECONDS", 30.0, minimum=1)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# --- sign-in throttling (docs/security.md): django-axes checks before the password is, on
# /login/, /admin/login/ and the API's Basic auth; failures are counted in the `default` database, per
# client address and per user name separately. REMOTE_ADDR is the address: behind the TLS proxy, daphne
# runs with --proxy-headers and the proxy must overwrite X-Forwarded-For (docs/security.md).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = env_bool("LOGIN_THROTTLE_ENABLED", True)
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("LOGIN_COOLOFF_MINUTES", 15.0, minimum=0.1))
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_RESET_ON_SUCCESS = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = True  # backoff: guessing while locked extends the lock
AXES_LOCKOUT_CALLABLE = "cryptomon.lockout.lockout_response"
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"  # `collectstatic` target (optional: WhiteNoise also serves from the finders)
STATICFILES_DIRS = [BASE_DIR / "static"]  # the dashboard's JS/CSS; static/vendor/ comes from setup-browser.sh
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
warnings.filterwarnings("ignore", message="No directory at")  # WhiteNoise: STATIC_ROOT is optional

# --- dashboard and JSON API (docs/dashboard.md)
API_RATE_LIMIT_PER_MINUTE = env_int("API_RATE_LIMIT_PER_MINUTE", 120, minimum=1)
API_MAX_PAGE_SIZE = env_int("API_MAX_PAGE_SIZE", 500, minimum=1)
API_MAX_CANDLES = env_int("API_MAX_CANDLES", 5000, minimum=1)
API_MAX_CHART_BARS = env_int("API_MAX_CHART_BARS", 1000, minimum=1)  # each 1d bar reads 1,440 candles
ALERTS_MAX_MUTES = env_int("ALERTS_MAX_MUTES", 200, minimum=1)  # per user, muted rules and symbols each
# The rule editor's backtest preview (docs/security.md): replaying history is CPU-bound, so it is bounded
# per request (symbols, the newest minutes of each, a wall-clock budget) and per user (previews a minute).
PREVIEW_RATE_LIMIT_PER_MINUTE = env_int("PREVIEW_RATE_LIMIT_PER_MINUTE", 10, minimum=1)
PREVIEW_MAX_SYMBOLS = env_int("PREVIEW_MAX_SYMBOLS", 25, minimum=1)
PREVIEW_MAX_MINUTES = env_int("PREVIEW_MAX_MINUTES", 3000, minimum=1)  # the 50 h retention of candles_1m
PREVIEW_MAX_SECONDS = env_float("PREVIEW_MAX_SECONDS", 5.0, minimum=0)

# --- /readyz (cryptomon/health.py; docs/security.md): status only unless staff or this bearer token
READYZ_TOKEN = env_str("READYZ_TOKEN", "")
READYZ_CACHE_SECONDS = env_float("READYZ_CACHE_SECONDS", 5.0, minimum=0)
READYZ_RATE_LIMIT_PER_MINUTE = env_int("READYZ_RATE_LIMIT_PER_MINUTE", 120, minimum=1)

SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True

# --- transport (docs/security.md). Production-safe unless the embedded servers (or DEBUG)
# are in use: the embedded/demo mode and the test harnesses serve plain HTTP on 127.0.0.1. Production runs
# behind the documented TLS proxy, which sets X-Forwarded-Proto. Each value can be overridden.
PLAIN_HTTP_DEFAULTS = EMBEDDED or DEBUG
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not PLAIN_HTTP_DEFAULTS)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]  # probes reach the process directly, without TLS
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not PLAIN_HTTP_DEFAULTS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not PLAIN_HTTP_DEFAULTS)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if PLAIN_HTTP_DEFAULTS else 31_536_000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not PLAIN_HTTP_DEFAULTS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not PLAIN_HTTP_DEFAULTS)
# The header the TLS proxy sets (it must overwrite a client's own); "none" trusts no header.
_proxy_ssl_header = env_str("SECURE_PROXY_SSL_HEADER", "" if PLAIN_HTTP_DEFAULTS else "X-Forwarded-Proto")
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https")
    if _proxy_ssl_header.strip().lower() not in {"", "none", "false", "off"}
    else None
)

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "nats": {"level": "WARNING"},
        "asyncio": {"level": "WARNING"},
        "axes": {"level": "WARNING"},  # failures and lockouts; user names and addresses masked
    },
}
