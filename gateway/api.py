"""The read-only JSON API for people who script against cryptomon (docs/dashboard.md "JSON API").

- Auth: the dashboard's session, or HTTP Basic with a Django user's name and password (no session is
  created). Anonymous callers only with ``ALLOW_ANONYMOUS_DASHBOARD`` (they see global alerts, as on the
  dashboard).
- Every error has one shape: ``{"error": {"status", "code", "message", "parameter"}}``; a bad or unknown
  query parameter is a 400 naming it.
- Rate limit: ``API_RATE_LIMIT_PER_MINUTE`` requests per client per UTC minute, counted in Redis (so every
  web process shares the count); a client is the user, or the remote address when anonymous. Over the
  limit: 429 with ``Retry-After``. If Redis is unreachable the request is served (logged): the API stays
  up, and the limit is back with Redis.
- Times are epoch milliseconds (UTC) or ISO 8601 (UTC when no offset is given), as on the wire (docs/contract.md §5).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from urllib.parse import urlencode

import redis
from django.conf import settings
from django.contrib.auth import authenticate
from django.http import HttpRequest, JsonResponse

from alerts.models import AlertRule
from cryptomon.contract.times import from_ms
from gateway import selectors

logger = logging.getLogger(__name__)

RATE_KEY = "cryptomon:api:rate:{client}:{minute}"
DEFAULT_PAGE_SIZE = 100
DEFAULT_CANDLES = 1000
DEFAULT_CHART_BARS = 300
MIN_MS, MAX_MS = 0, 253402300799999  # 9999-12-31
# ASCII digits only: str.isdigit() accepts "²" and "٣", which int() refuses or reads as another number,
# and int() refuses more than 4,300 digits. Epoch milliseconds need up to 15 digits.
WHOLE_NUMBER = re.compile(r"[0-9]{1,12}")
EPOCH_MS = re.compile(r"-?[0-9]+")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, parameter: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.parameter = status, code, message, parameter


def error_response(error: ApiError, headers: dict | None = None) -> JsonResponse:
    body = {
        "error": {
            "status": error.status,
            "code": error.code,
            "message": error.message,
            "parameter": error.parameter,
        }
    }
    return JsonResponse(body, status=error.status, headers=headers, json_dumps_params={"ensure_ascii": False})


def bad_parameter(name: str, message: str) -> ApiError:
    return ApiError(400, "bad_parameter", f"{name}: {message}", name)


# --- parameters ------------------------------------------------------------------------------------------


def time_param(request: HttpRequest, name: str) -> datetime | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return None
    if EPOCH_MS.fullmatch(raw):
        if len(raw) > len(str(MAX_MS)) or not MIN_MS <= int(raw) <= MAX_MS:
            raise bad_parameter(name, f"{raw[:40]} is out of range (epoch milliseconds)")
        return from_ms(int(raw))
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise bad_parameter(
            name, f"{raw[:40]!r} is not a time (epoch milliseconds or ISO 8601, e.g. 2026-01-01T00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def int_param(request: HttpRequest, name: str, default: int, low: int, high: int) -> int:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    if not WHOLE_NUMBER.fullmatch(raw):
        raise bad_parameter(name, f"{raw[:40]!r} is not a whole number (digits 0-9, at most 12)")
    value = int(raw)
    if not low <= value <= high:
        raise bad_parameter(name, f"must be between {low} and {high} (got {value})")
    return value


def choice_param(request: HttpRequest, name: str, choices: list[str]) -> str | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise bad_parameter(name, f"{raw[:40]!r} is not one of {', '.join(choices)}")
    return raw


def text_param(request: HttpRequest, name: str, max_length: int = 120) -> str | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_length:
        raise bad_parameter(name, f"longer than {max_length} characters")
    if "\x00" in raw:  # PostgreSQL text cannot hold NUL: the query would fail with a 500
        raise bad_parameter(name, "contains a NUL character")
    return raw


def time_range(request: HttpRequest, start: str, end: str) -> tuple[datetime | None, datetime | None]:
    low, high = time_param(request, start), time_param(request, end)
    if low is not None and high is not None and low >= high:
        raise bad_parameter(end, f"must be after {start}")
    return low, high


# --- auth and rate limit ---------------------------------------------------------------------------------


MAX_USERNAME_LENGTH = 150  # Django's user name field
MAX_PASSWORD_LENGTH = 4096  # as Django's password hashers: a longer one only costs hashing time


def _basic_user(request: HttpRequest):
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        username, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        username, password = "", ""
    if "\x00" in username or "\x00" in password:  # no account has one; PostgreSQL text cannot hold it
        raise ApiError(401, "unauthorized", "wrong user name or password")
    if len(username) > MAX_USERNAME_LENGTH or len(password) > MAX_PASSWORD_LENGTH:
        # Never stored as a failed attempt (the lockout table holds 255 characters) nor hashed (cost).
        raise ApiError(
            401,
            "unauthorized",
            f"user name (at most {MAX_USERNAME_LENGTH} characters) or password "
            f"(at most {MAX_PASSWORD_LENGTH}) too long",
        )
    user = authenticate(request, username=username, password=password) if username else None
    if user is None:
        raise ApiError(401, "unauthorized", "wrong user name or password")
    return user


_redis: redis.Redis | None = None


def _redis_client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    return _redis


def rate_limit(client: str) -> tuple[int, int]:
    """Count one request of `client`; returns (remaining, seconds until the window resets)."""
    now = time.time()
    minute = int(now // 60)
    key = RATE_KEY.format(client=client, minute=minute)
    limit = settings.API_RATE_LIMIT_PER_MINUTE
    reset = max(1, math.ceil((minute + 1) * 60 - now))
    try:
        pipeline = _redis_client().pipeline()
        pipeline.incr(key)
        pipeline.expire(key, 61)
        count = pipeline.execute()[0]
    except redis.RedisError as error:
        logger.warning("api: rate limit not counted (Redis unreachable): %s", error)
        return limit, reset
    return limit - count, reset


def api_endpoint(*params: str) -> Callable:
    """Wrap a view returning a dict: auth, rate limit, known parameters, one error shape."""
    allowed = frozenset(params)

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> JsonResponse:
            if request.method not in ("GET", "HEAD"):
                return error_response(
                    ApiError(405, "method_not_allowed", "the API is read-only: use GET"),
                    headers={"Allow": "GET, HEAD"},
                )
            try:
                user = _basic_user(request) or request.user
            except ApiError as error:
                return error_response(error, headers={"WWW-Authenticate": 'Basic realm="cryptomon"'})
            if not user.is_authenticated and not settings.ALLOW_ANONYMOUS_DASHBOARD:
                return error_response(
                    ApiError(401, "unauthorized", "sign in or use HTTP Basic authentication"),
                    headers={"WWW-Authenticate": 'Basic realm="cryptomon"'},
                )
            client = (
                f"user:{user.pk}" if user.is_authenticated else f"ip:{request.META.get('REMOTE_ADDR', '')}"
            )
            remaining, reset = rate_limit(client)
            headers = {
                "X-RateLimit-Limit": str(settings.API_RATE_LIMIT_PER_MINUTE),
                "X-RateLimit-Remaining": str(max(remaining, 0)),
                "X-RateLimit-Reset": str(reset),
            }
            if remaining < 0:
                message = (
                    f"more than {settings.API_RATE_LIMIT_PER_MINUTE} requests this minute; retry in {reset} s"
                )
                return error_response(
                    ApiError(429, "rate_limited", message), headers={**headers, "Retry-After": str(reset)}
                )
            request.api_user = user
            try:
                unknown = sorted(set(request.GET) - allowed)
                if unknown:
                    known = ", ".join(sorted(allowed)) or "none"
                    raise bad_parameter(unknown[0], f"unknown parameter (known: {known})")
                body = view(request, *args, **kwargs)
            except ApiError as error:
                return error_response(error, headers=headers)
            return JsonResponse(body, headers=headers, json_dumps_params={"ensure_ascii": False})

        return wrapper

    return decorator


# --- endpoints -------------------------------------------------------------------------------------------


@api_endpoint("trading")
def symbols(request: HttpRequest) -> dict:
    """Every known symbol with its newest 1-day price, change and volume."""
    trading = choice_param(request, "trading", ["true", "false"])
    rows = selectors.symbols()
    if trading is not None:
        rows = [row for row in rows if row["trading"] == (trading == "true")]
    return {"symbols": rows}


@api_endpoint("rule", "symbol", "direction", "since", "until", "page", "page_size")
def alerts(request: HttpRequest) -> dict:
    """The caller's visible alerts (docs/contract.md §5 payloads), newest first, a page at a time."""
    since, until = time_range(request, "since", "until")
    filters = selectors.AlertFilters(
        rule=text_param(request, "rule"),
        symbol=text_param(request, "symbol", 64),
        direction=choice_param(request, "direction", list(AlertRule.Direction.values)),
        since=since,
        until=until,
    )
    page = int_param(request, "page", 1, 1, 1_000_000)
    page_size = int_param(request, "page_size", DEFAULT_PAGE_SIZE, 1, settings.API_MAX_PAGE_SIZE)
    queryset = selectors.filtered_alerts(request.api_user, filters)
    count = queryset.count()
    rows = queryset[(page - 1) * page_size : page * page_size]
    more = page * page_size < count
    query = request.GET.copy()
    query["page"] = str(page + 1)
    return {
        "alerts": [row.to_payload() for row in rows],
        "page": page,
        "page_size": page_size,
        "count": count,
        "next": f"{request.path}?{urlencode(sorted(query.items()))}" if more else None,
    }


def _known(symbol: str) -> None:
    if not selectors.symbol_exists(symbol):
        raise ApiError(404, "not_found", f"unknown symbol {symbol!r}")


@api_endpoint("start", "end", "limit")
def candles(request: HttpRequest, symbol: str) -> dict:
    """Stored 1-minute candles in [start, end), oldest first; the newest `limit` of the range."""
    start, end = time_range(request, "start", "end")
    limit = int_param(request, "limit", DEFAULT_CANDLES, 1, settings.API_MAX_CANDLES)
    _known(symbol)
    return {"symbol": symbol, "candles": selectors.candles(symbol, start, end, limit)}


@api_endpoint("interval", "bars", "end")
def chart(request: HttpRequest, symbol: str) -> dict:
    """The symbol page's chart: candles of `interval` aggregated on the server, their indicators, alerts."""
    interval = choice_param(request, "interval", list(selectors.CHART_INTERVALS)) or "1m"
    bars = int_param(request, "bars", DEFAULT_CHART_BARS, 1, settings.API_MAX_CHART_BARS)
    end = time_param(request, "end")
    _known(symbol)
    return selectors.chart(request.api_user, symbol, interval, bars, end)


@api_endpoint("at")
def metrics(request: HttpRequest, symbol: str) -> dict:
    """Every §7 metric of the newest stored final bar (at or before `at`)."""
    at = time_param(request, "at")
    _known(symbol)
    latest = selectors.latest_metrics(symbol, at)
    if latest is None:
        raise ApiError(
            404, "not_found", f"no stored metrics for {symbol!r}" + (" at that time" if at else "")
        )
    return latest


def not_found(request: HttpRequest, exception=None) -> JsonResponse:
    return error_response(ApiError(404, "not_found", f"no API endpoint at {request.path}"))
