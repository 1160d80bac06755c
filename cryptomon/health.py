"""Reachability checks: the thorough ones behind `manage.py check_infra`, and the cheap read-only ones
behind `/readyz` (docs/security.md).

`/readyz` is safe on a public address: anonymous callers get ``{"status": ...}`` only; staff users, or a
caller with ``Authorization: Bearer <READYZ_TOKEN>``, also get each check with every URL masked. The checks
are ``SELECT 1`` on each database alias, a NATS connect + flush (never a stream call) and a Redis PING;
one result serves every caller for ``READYZ_CACHE_SECONDS``, and each client address may ask
``READYZ_RATE_LIMIT_PER_MINUTE`` times a minute (429 with ``Retry-After`` beyond).
"""

from __future__ import annotations

import asyncio
import hmac
import math
import re
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse

from cryptomon import messaging
from cryptomon.contract import subjects


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def check_timeseries_database() -> Check:
    try:
        with connections["timeseries"].cursor() as cursor:
            cursor.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables ORDER BY 1"
                if _has_timescaledb(cursor)
                else "SELECT NULL WHERE false"
            )
            hypertables = [row[0] for row in cursor.fetchall()]
            cursor.execute("SELECT count(*) FROM candles_1m")
            candles = cursor.fetchone()[0]
    except Exception as error:
        return Check("time-series database", False, _one_line(error))
    kind = (
        f"TimescaleDB, hypertables: {', '.join(hypertables) or 'none'}" if hypertables else "plain PostgreSQL"
    )
    return Check("time-series database", True, f"{kind}; {candles} candles stored")


def _has_timescaledb(cursor) -> bool:
    cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    return cursor.fetchone() is not None


def check_metadata_database() -> Check:
    from alerts.models import AlertRule

    try:
        count = AlertRule.objects.count()
    except Exception as error:
        return Check("metadata database", False, _one_line(error))
    return Check("metadata database", True, f"{count} alert rules")


async def check_nats(timeout: float = 3.0) -> list[Check]:
    checks: list[Check] = []
    try:
        nc = await asyncio.wait_for(
            messaging.connect(
                "check",
                allow_reconnect=False,
                max_reconnect_attempts=0,
                disconnected_cb=_quiet,
                error_cb=_quiet,
            ),
            timeout,
        )
    except Exception as error:
        return [Check("NATS", False, f"{mask_url(settings.NATS_URL)}: {_error_text(error)}")]
    try:
        version = nc.connected_server_version
        checks.append(
            Check(
                "NATS",
                True,
                f"{mask_url(settings.NATS_URL)} (server {version.major}.{version.minor}.{version.patch})",
            )
        )
        js = nc.jetstream()
        try:
            await asyncio.wait_for(messaging.ensure_streams(js), timeout)
            account = await asyncio.wait_for(js.account_info(), timeout)
            checks.append(
                Check("JetStream", True, f"{account.streams} streams, {account.storage} bytes stored")
            )
            for name in subjects.STREAMS:
                info = await js.stream_info(name)
                checks.append(Check(f"stream {name}", True, f"{info.state.messages} messages"))
        except Exception as error:
            checks.append(Check("JetStream", False, _one_line(error) or type(error).__name__))
        checks.append(await _round_trip(nc, timeout))
    finally:
        await nc.close()
    return checks


async def _quiet(*args) -> None:
    """A one-shot check reports failures itself; the client's callbacks stay silent."""


async def _round_trip(nc, timeout: float) -> Check:
    subject = f"cryptomon.check.{time.monotonic_ns()}"
    subscription = await nc.subscribe(subject, max_msgs=1)
    started = time.perf_counter()
    try:
        await nc.publish(subject, b"ping")
        await nc.flush()
        await subscription.next_msg(timeout=timeout)
    except Exception as error:
        return Check("publish/subscribe", False, _one_line(error) or type(error).__name__)
    return Check("publish/subscribe", True, f"round trip {(time.perf_counter() - started) * 1000:.1f} ms")


def check_redis() -> Check:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
    try:
        info = client.info("server")
    except Exception as error:
        return Check("Redis", False, f"{mask_url(settings.REDIS_URL)}: {_one_line(error)}")
    finally:
        client.close()
    version = info.get("valkey_version") or info.get("redis_version")
    return Check("Redis", True, f"{mask_url(settings.REDIS_URL)} (version {version})")


def run_all() -> list[Check]:
    checks = [check_timeseries_database(), check_metadata_database()]
    checks += asyncio.run(check_nats())
    checks.append(check_redis())
    return checks


def _one_line(error: Exception) -> str:
    """An error on one line, any credentials in URLs it quotes masked."""
    return mask_urls_in(" ".join(str(error).split()))[:300]


def _error_text(error: Exception) -> str:
    return _one_line(error) or type(error).__name__


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s/@:]*)(?::[^\s/@]*)?@")


def mask_url(url: str) -> str:
    """A URL fit for a message: ``nats://user:***@host:port``; a lone user part (a NATS or Redis token) is
    masked whole. A comma-separated list (a NATS cluster's servers) is masked URL by URL."""
    if "," in url:
        return ",".join(mask_url(part) for part in url.split(","))
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    credentials, host = parts.netloc.rsplit("@", 1)
    user = f"{parts.username}:***" if parts.password is not None else "***"
    return parts._replace(netloc=f"{user}@{host}").geturl() if credentials else url


def mask_urls_in(text: str) -> str:
    """`text` with the password (or token) of every URL in it masked, e.g. in a driver's error message."""

    def masked(match: re.Match) -> str:
        has_password = ":" in match.group(0)[len(match.group("scheme")) :]
        user = f"{match.group('user')}:***" if has_password else "***"
        return f"{match.group('scheme')}{user}@"

    return _URL_CREDENTIALS.sub(masked, text)


# --- /readyz: cheap, read-only, cached, rate limited -----------------------------------------------------


def probe_database(alias: str, name: str) -> Check:
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as error:
        return Check(name, False, f"{alias}: {_error_text(error)}")
    return Check(name, True, f"{alias}: SELECT 1 answered")


async def probe_nats(timeout: float = 2.0) -> Check:
    """Connect, flush and read the server's INFO: proves the server answers without touching a stream."""
    url = settings.NATS_URL
    try:
        nc = await asyncio.wait_for(
            messaging.connect(
                "readyz",
                url,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=timeout,
                disconnected_cb=_quiet,
                error_cb=_quiet,
            ),
            timeout,
        )
    except Exception as error:
        return Check("NATS", False, f"{mask_url(url)}: {_error_text(error)}")
    try:
        await nc.flush(timeout=timeout)
        # The INFO the server sent on connect (nats-py has no public accessor for its `jetstream` flag).
        if not getattr(nc, "_server_info", {}).get("jetstream"):
            return Check("NATS", False, f"{mask_url(url)}: JetStream is not enabled")
        version = nc.connected_server_version
        server = f"{version.major}.{version.minor}.{version.patch}"
        return Check("NATS", True, f"{mask_url(url)} (server {server}, JetStream on)")
    except Exception as error:
        return Check("NATS", False, f"{mask_url(url)}: {_error_text(error)}")
    finally:
        await nc.close()


def probe_redis() -> Check:
    import redis

    url = settings.REDIS_URL
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except Exception as error:
        return Check("Redis", False, f"{mask_url(url)}: {_one_line(error)}")
    finally:
        client.close()
    return Check("Redis", True, f"{mask_url(url)}: PING answered")


def readiness() -> list[Check]:
    """The /readyz checks, reused for READYZ_CACHE_SECONDS by every caller of this process."""
    key = (settings.NATS_URL, settings.REDIS_URL)
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(key)
        if cached and now - cached[0] < settings.READYZ_CACHE_SECONDS:
            return cached[1]
    checks = [
        probe_database("timeseries", "time-series database"),
        probe_database("default", "metadata database"),
        asyncio.run(probe_nats()),
        probe_redis(),
    ]
    with _cache_lock:
        _cache.clear()  # one entry: the settings' current URLs
        _cache[key] = (time.monotonic(), checks)
    return checks


_cache: dict[tuple[str, str], tuple[float, list[Check]]] = {}
_cache_lock = threading.Lock()


class _SlidingWindow:
    """Requests per client in the last 60 s, in this process. Remembers at most `clients` addresses (the
    least recently seen are forgotten), so a flood of addresses cannot grow it without bound."""

    def __init__(self, clients: int = 10_000):
        self.clients = clients
        self.seen: OrderedDict[str, deque[float]] = OrderedDict()
        self.lock = threading.Lock()

    def hit(self, client: str, limit: int) -> int:
        """Count one request; 0 if allowed, else the seconds until the next one would be."""
        now = time.monotonic()
        with self.lock:
            times = self.seen.pop(client, None) or deque()
            self.seen[client] = times
            while len(self.seen) > self.clients:
                self.seen.popitem(last=False)
            while times and now - times[0] >= 60:
                times.popleft()
            if len(times) >= limit:
                return max(1, math.ceil(60 - (now - times[0])))
            times.append(now)
            return 0


_rate = _SlidingWindow()


def _may_see_details(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff:
        return True
    token = settings.READYZ_TOKEN
    header = request.headers.get("Authorization", "")
    if not token or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness probe: 200 when both databases, NATS and Redis answer, else 503 (details for staff)."""
    retry_after = _rate.hit(request.META.get("REMOTE_ADDR", ""), settings.READYZ_RATE_LIMIT_PER_MINUTE)
    if retry_after:
        return JsonResponse({"status": "rate_limited"}, status=429, headers={"Retry-After": str(retry_after)})
    checks = readiness()
    ok = all(check.ok for check in checks)
    body: dict = {"status": "ok" if ok else "unavailable"}
    if _may_see_details(request):
        body["checks"] = {check.name: {"ok": check.ok, "detail": check.detail} for check in checks}
    response = JsonResponse(body, status=200 if ok else 503)
    response["Cache-Control"] = "no-store"
    return response
