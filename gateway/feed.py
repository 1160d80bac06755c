"""Feed status and the market table the gateway shares through Redis (docs/contract.md §10 `status` and `market`).

The feed status comes from the collector's heartbeat: every collector shard publishes ``collector.status``
on core NATS every 5 s (docs/collector.md). The bridge (`run_gateway`) folds the shards' latest heartbeats
into one §10 status, keeps a copy in Redis for sockets that connect later, and sends it to the ``feed``
group when it changes:

- ``symbols_live``: the sum over the shards heard from lately;
- ``lag_ms``: the largest shard lag (the feed is as late as its slowest shard), null when none reports one;
- ``last_open_time``: the oldest of the shards' newest published minutes (every shard has published up to
  there), the last value known when every shard went silent, null before the first heartbeat;
- ``stale``: true when a shard says so, when a known shard has been silent for more than
  ``FEED_STALE_SECONDS`` (default 15 s: three missed heartbeats), before the first heartbeat, and when no
  gateway is running (the Redis copy expires after ``FEED_STATUS_TTL_SECONDS``).

Shards are keyed by their ``shard`` field (``"k/N"``); a heartbeat with a new N forgets the shards of the
old layout, and a shard silent for ten times ``FEED_STALE_SECONDS`` is forgotten (scaled down).
"""

from __future__ import annotations

import time
import weakref

import redis.asyncio as aioredis
from django.conf import settings

from cryptomon import messaging
from cryptomon.contract.messages import Heartbeat
from cryptomon.contract.names import MARKET_METRICS

FEED_KEY = "cryptomon:gateway:feed"
MARKET_KEY = "cryptomon:gateway:market"
FORGET_AFTER_STALE_PERIODS = 10
REDIS_POOL_SIZE = 50

UNKNOWN_STATUS = {"symbols_live": 0, "lag_ms": None, "last_open_time": None, "stale": True}


class FeedTracker:
    """Folds the shards' heartbeats into the §10 status; pure Python, clock injectable for tests."""

    def __init__(self, stale_after: float, clock=time.monotonic):
        self.stale_after = stale_after
        self.clock = clock
        self.shards: dict[str, tuple[float, Heartbeat]] = {}
        self.last_open_time: int | None = None

    def saw(self, beat: Heartbeat) -> None:
        for shard in [s for s, (_, old) in self.shards.items() if old.shards != beat.shards]:
            del self.shards[shard]  # the collector was re-sharded
        self.shards[beat.shard] = (self.clock(), beat)

    def status(self) -> dict:
        now = self.clock()
        forget = now - self.stale_after * FORGET_AFTER_STALE_PERIODS
        for shard in [s for s, (seen, _) in self.shards.items() if seen < forget]:
            del self.shards[shard]
        fresh = [beat for seen, beat in self.shards.values() if now - seen <= self.stale_after]
        if not fresh:
            return {**UNKNOWN_STATUS, "last_open_time": self.last_open_time}
        lags = [beat.lag_ms for beat in fresh if beat.lag_ms is not None]
        opens = [beat.last_open_time for beat in fresh if beat.last_open_time is not None]
        if opens:
            self.last_open_time = min(opens)
        return {
            "symbols_live": sum(beat.symbols_live for beat in fresh),
            "lag_ms": max(lags) if lags else None,
            "last_open_time": self.last_open_time,
            "stale": len(fresh) < len(self.shards) or any(beat.stale for beat in fresh),
        }


def market_row(payload: dict) -> dict | None:
    """A §10 market row from a `metrics.live` or `metrics.calculated` payload, or None when unusable."""
    symbol = payload.get("symbol")
    metrics = payload.get("metrics")
    open_time = payload.get("open_time")
    if not isinstance(symbol, str) or not symbol or not isinstance(metrics, dict):
        return None
    if not isinstance(open_time, int) or isinstance(open_time, bool):  # rows are ordered by it
        return None
    row = {"symbol": symbol, "price": payload.get("price")}
    for name in MARKET_METRICS:
        row[name] = metrics.get(name)
    row["open_time"] = open_time
    return row


_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def redis_client() -> aioredis.Redis:
    """One asyncio Redis client per event loop (clients are bound to the loop that first uses them)."""
    import asyncio

    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        # A blocking pool: in a reconnect storm a thousand sockets wait for one of REDIS_POOL_SIZE
        # connections instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=REDIS_POOL_SIZE,
            timeout=10,
            socket_connect_timeout=5,
            socket_timeout=10,
            health_check_interval=30,
        )
        client = aioredis.Redis(connection_pool=pool)
        _clients[loop] = client
    return client


async def read_status(client: aioredis.Redis | None = None) -> dict:
    """The latest published status; the "unknown, stale" status when no gateway has published lately."""
    raw = await (client or redis_client()).get(FEED_KEY)
    if not raw:
        return dict(UNKNOWN_STATUS)
    try:
        return messaging.decode(raw)
    except ValueError:
        return dict(UNKNOWN_STATUS)


async def read_market(client: aioredis.Redis | None = None) -> list[dict]:
    """Every symbol's latest market row, ordered by symbol (for the first frame after `market:true`)."""
    rows = []
    for raw in (await (client or redis_client()).hgetall(MARKET_KEY)).values():
        try:
            rows.append(messaging.decode(raw))
        except ValueError:
            continue
    rows.sort(key=lambda row: row.get("symbol") or "")
    return rows
