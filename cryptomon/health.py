"""Reachability checks shared by `check_infra` and `/readyz`: one function per dependency."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connections

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
        return [Check("NATS", False, f"{settings.NATS_URL}: {_one_line(error) or type(error).__name__}")]
    try:
        version = nc.connected_server_version
        checks.append(
            Check(
                "NATS", True, f"{settings.NATS_URL} (server {version.major}.{version.minor}.{version.patch})"
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
        return Check("Redis", False, f"{_safe_url(settings.REDIS_URL)}: {_one_line(error)}")
    finally:
        client.close()
    version = info.get("valkey_version") or info.get("redis_version")
    return Check("Redis", True, f"{_safe_url(settings.REDIS_URL)} (version {version})")


def run_all() -> list[Check]:
    checks = [check_timeseries_database(), check_metadata_database()]
    checks += asyncio.run(check_nats())
    checks.append(check_redis())
    return checks


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300]


def _safe_url(url: str) -> str:
    """A URL without its password, for messages and logs."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
