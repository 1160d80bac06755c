"""The NATS → Channels bridge behind `run_gateway` (docs/contract.md §1, §10).

It subscribes (core NATS; the streams are created first, docs/contract.md §5) to

- ``alerts.triggered.>``: alerts go at once to the ``alerts`` group, those that arrive while the previous
  group message is being sent together in the next one (a minute's burst of hundreds of alerts is a few
  channel-layer round trips, not one each); every socket filters each alert for its own subscription and
  audience (group names are ASCII and never contain a symbol);
- ``metrics.live.>`` and ``metrics.calculated.>``: market rows from each symbol's newest bar, live or
  final (an older bar never replaces a newer row), coalesced per symbol and sent to the ``market`` group at
  most once per tick (1 s) as only the rows that changed; the full table is kept in Redis for new
  subscribers. Previews are best effort (dropped while NATS is away, skipped when the minute's final is
  already in), so the final bars keep the table moving without them;
- ``collector.status`` (core NATS, every collector shard every 5 s): the feed status (``gateway.feed``), sent
  to the ``feed`` group when it changes.

Core subscriptions miss what is published while the bus or Redis is away, so after a NATS reconnect or a
Redis recovery the bridge sends ``resync`` and every socket takes a fresh snapshot: nothing on screen stays
silently stale. A Redis restart short enough for redis-py's own retries never raises here, so the bridge also
watches the server's ``run_id``; after a restart it rewrites the whole market table into Redis and sends
``resync`` only once the web processes have subscribed again (``PUBSUB NUMSUB`` back to its count before the
restart, or after ``RESYNC_WAIT_SECONDS``; each web process subscribes once, through its ``gateway.hub``):
Redis pub/sub keeps nothing for a subscriber that is not there yet. Frames are encoded once here
(``frame``, ``texts``) so a thousand sockets do not encode them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict

from cryptomon import heap, messaging
from cryptomon.contract import subjects
from cryptomon.contract.messages import check_alert
from cryptomon.workers import Worker
from gateway import feed

logger = logging.getLogger(__name__)

ALERTS_GROUP = "alerts"
MARKET_GROUP = "market"
FEED_GROUP = "feed"
RESYNC_GROUP = "resync"
MARKET_ROW_MAX_AGE_SECONDS = 3600.0  # rows of symbols silent this long leave the table (delisted)
STATUS_SUBJECT = subjects.COLLECTOR_STATUS  # the collector's feed heartbeat
RECENT_ALERT_IDS = 10_000  # a republished alert (same id, e.g. run_alerts restarted) reaches clients once
ALERTS_PER_MESSAGE = 100  # alerts in one channel-layer message at most
RESYNC_WAIT_SECONDS = 30.0  # after a Redis restart, resync even if a web process never subscribes again


def alerts_message(payloads: list[dict]) -> dict:
    """One group message for several alerts, oldest first, each also encoded once (``texts``: the sockets'
    frames are built from these, never encoded again; ``gateway.hub``)."""
    return {"type": "alert.batch", "alerts": payloads, "texts": [_text(payload) for payload in payloads]}


def market_message(rows: list[dict]) -> dict:
    return {"type": "market.rows", "rows": rows, "frame": _text({"type": "market", "rows": rows})}


def status_message(status: dict) -> dict:
    return {"type": "feed.status", "feed": status, "frame": _text({"type": "status", "feed": status})}


def _text(frame: dict) -> str:
    return messaging.encode(frame).decode()


def valid_alert(payload: dict) -> bool:
    """A well-formed §5 alert (a socket filters on its id, symbol, rule and owner); anything else is dropped
    with a warning."""
    try:
        check_alert(payload)
    except ValueError:
        return False
    return True


class MarketTable:
    """Latest row per symbol plus the set changed since the last flush (the coalescing)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.rows: dict[str, dict] = {}
        self.updated: dict[str, float] = {}
        self.changed: set[str] = set()

    def update(self, row: dict) -> None:
        symbol = row["symbol"]
        self.updated[symbol] = self.clock()
        current = self.rows.get(symbol)
        if current is not None and row["open_time"] < current["open_time"]:
            return  # e.g. a minute's final bar after the next minute's preview
        if current != row:
            self.rows[symbol] = row
            self.changed.add(symbol)

    def take_changes(self) -> list[dict]:
        changed = [self.rows[symbol] for symbol in sorted(self.changed)]
        self.changed.clear()
        return changed

    def expire(self, max_age: float = MARKET_ROW_MAX_AGE_SECONDS) -> list[str]:
        horizon = self.clock() - max_age
        gone = [symbol for symbol, seen in self.updated.items() if seen < horizon]
        for symbol in gone:
            del self.rows[symbol], self.updated[symbol]
            self.changed.discard(symbol)
        return gone

    def mark_all_changed(self) -> None:
        """Send every row again (Redis restarted: its copy of the table is gone)."""
        self.changed.update(self.rows)


class Bridge(Worker):
    """One bridge per `run_gateway` process. `run()` until `stop()`; `started` is set once subscribed."""

    graceful = True

    def __init__(
        self,
        channel_layer,
        *,
        nats_url: str | None = None,
        tick_seconds: float = 1.0,
        stale_seconds: float = 15.0,
        status_ttl_seconds: float = 30.0,
        redis=None,
    ):
        super().__init__()
        self.layer = channel_layer
        self.nats_url = nats_url
        self.tick_seconds = tick_seconds
        self.status_ttl_seconds = status_ttl_seconds
        self.redis = redis
        self.market = MarketTable()
        self.tracker = feed.FeedTracker(stale_after=stale_seconds)
        self.published_status: dict | None = None
        self.resync_wanted = asyncio.Event()
        self.redis_ok = True
        self.redis_run_id: str | None = None  # changes when the Redis server restarts
        self.resync_listeners = 0  # web processes subscribed to `resync` at the last healthy tick
        self.resync_deadline = 0.0  # monotonic time after which a pending resync goes regardless
        self.nc = None
        self.recent_ids: OrderedDict[str, None] = OrderedDict()
        self.waiting_alerts: list[dict] = []
        self.alert_sender: asyncio.Task | None = None

    # --- NATS side -------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (retrying until it works) and subscribe; subscriptions survive reconnects."""
        delay = 0.2
        while True:
            try:
                self.nc, _js = await messaging.connect_jetstream(
                    "gateway",
                    self.nats_url,
                    reconnected_cb=self._on_reconnected,
                    disconnected_cb=self._on_disconnected,
                )
                break
            except Exception as error:  # NATS not up yet: a gateway never gives up on the bus
                logger.warning("gateway: cannot reach NATS yet (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        await self.nc.subscribe("alerts.triggered.>", cb=self._on_alert)
        await self.nc.subscribe(subjects.METRICS_LIVE, cb=self._on_live)
        await self.nc.subscribe(subjects.METRICS, cb=self._on_live)
        await self.nc.subscribe(STATUS_SUBJECT, cb=self._on_heartbeat)
        await self.nc.flush()

    async def _on_disconnected(self) -> None:
        logger.warning("gateway: NATS disconnected; clients will resync when it is back")

    async def _on_reconnected(self) -> None:
        logger.info("gateway: NATS reconnected; asking every client to resync")
        self.resync_wanted.set()

    @staticmethod
    def _decode(msg) -> dict | None:
        try:
            return messaging.decode(msg.data)
        except ValueError as error:
            logger.warning("gateway: dropping bad message on %s: %s", msg.subject, error)
            return None

    async def _on_alert(self, msg) -> None:
        payload = self._decode(msg)
        if payload is None or not valid_alert(payload):
            self.stats.inc("gateway_bad_messages_total")
            if payload is not None:
                logger.warning("gateway: dropping alert without id/symbol/rule on %s", msg.subject)
            return
        if payload["id"] in self.recent_ids:
            self.stats.inc("gateway_duplicate_alerts_total")
            return
        self.recent_ids[payload["id"]] = None
        if len(self.recent_ids) > RECENT_ALERT_IDS:
            self.recent_ids.popitem(last=False)
        self.stats.inc("gateway_alerts_total")
        self.waiting_alerts.append(payload)
        if self.alert_sender is None or self.alert_sender.done():
            self.alert_sender = asyncio.get_running_loop().create_task(self._send_alerts())

    async def _send_alerts(self) -> None:
        await asyncio.sleep(0)  # alerts read from the same socket buffer go in the first message
        while self.waiting_alerts:
            batch = self.waiting_alerts[:ALERTS_PER_MESSAGE]
            del self.waiting_alerts[:ALERTS_PER_MESSAGE]
            await self._group_send(ALERTS_GROUP, alerts_message(batch))

    async def _on_live(self, msg) -> None:
        payload = self._decode(msg)
        row = None if payload is None else feed.market_row(payload)
        if row is None:
            self.stats.inc("gateway_bad_messages_total")
            return
        self.stats.inc("gateway_live_total")
        self.market.update(row)

    async def _on_heartbeat(self, msg) -> None:
        payload = self._decode(msg)
        if payload is None:
            self.stats.inc("gateway_bad_messages_total")
            return
        try:
            beat = feed.Heartbeat.parse(payload)
        except ValueError as error:
            self.stats.inc("gateway_bad_messages_total")
            logger.warning("gateway: dropping a bad %s heartbeat: %s", STATUS_SUBJECT, error)
            return
        self.stats.inc("gateway_heartbeats_total")
        self.tracker.saw(beat)

    # --- Channels / Redis side -------------------------------------------------------------------------

    async def _group_send(self, group: str, message: dict) -> bool:
        try:
            await asyncio.wait_for(self.layer.group_send(group, message), timeout=5)
        except Exception as error:
            self.stats.inc("gateway_send_errors_total")
            if self.redis_ok:
                logger.warning("gateway: channel layer unavailable (%s); will resync when it is back", error)
            self.redis_ok = False
            return False
        return True

    def _resync_channel(self) -> str | None:
        """The Redis channel behind the `resync` group (pub/sub layer only; the core layer keeps messages)."""
        from channels_redis.pubsub import RedisPubSubChannelLayer

        if not isinstance(self.layer, RedisPubSubChannelLayer):
            return None
        return self.layer._get_group_channel_name(RESYNC_GROUP)

    def _redis_recovered(self, why: str) -> None:
        logger.info("gateway: %s; rewriting the market table and asking every client to resync", why)
        self.market.mark_all_changed()
        self.resync_deadline = time.monotonic() + RESYNC_WAIT_SECONDS
        self.resync_wanted.set()

    async def tick(self) -> None:
        """Once a second: market deltas, feed status when changed, Redis copies, resync when due."""
        redis = self.redis or feed.redis_client()
        rows = self.market.take_changes()
        gone = self.market.expire()
        status = self.tracker.status()
        channel = self._resync_channel()
        try:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.info("server")
                if channel is not None:
                    pipe.pubsub_numsub(channel)
                if rows:
                    pipe.hset(feed.MARKET_KEY, mapping={r["symbol"]: messaging.encode(r) for r in rows})
                if gone:
                    pipe.hdel(feed.MARKET_KEY, *gone)
                pipe.set(feed.FEED_KEY, messaging.encode(status), ex=max(1, round(self.status_ttl_seconds)))
                results = await asyncio.wait_for(pipe.execute(), timeout=5)
        except Exception as error:
            if self.redis_ok:
                logger.warning("gateway: Redis unavailable (%s); will resync when it is back", error)
            self.redis_ok = False
            for row in rows:  # keep them for the next tick
                self.market.changed.add(row["symbol"])
            return
        run_id = results[0].get("run_id")
        listeners = results[1][0][1] if channel is not None else None
        restarted = self.redis_run_id is not None and run_id != self.redis_run_id
        self.redis_run_id = run_id
        if not self.redis_ok or restarted:
            self.redis_ok = True
            self._redis_recovered("Redis restarted" if restarted else "Redis is back")
            return  # the next tick writes the whole table, then resyncs
        if rows and not await self._group_send(MARKET_GROUP, market_message(rows)):
            return
        if status != self.published_status and await self._group_send(FEED_GROUP, status_message(status)):
            self.published_status = status
        if not self.resync_wanted.is_set():
            if listeners is not None:
                self.resync_listeners = listeners
            return
        if (
            listeners is not None
            and listeners < self.resync_listeners
            and time.monotonic() < self.resync_deadline
        ):
            return  # a web process has not subscribed again yet: a resync now would not reach its sockets
        self.resync_wanted.clear()
        if await self._group_send(RESYNC_GROUP, {"type": "resync.event"}):
            self.stats.inc("gateway_resyncs_total")
            if listeners is not None:
                self.resync_listeners = listeners
        else:
            self.resync_wanted.set()

    async def serve(self) -> None:
        stop = self.stopping
        await self.connect()
        self.started.set()
        logger.info(
            "gateway: bridging alerts.triggered.>, metrics.live.>, metrics.calculated.>, %s", STATUS_SUBJECT
        )
        freezer = asyncio.create_task(heap.keep_collections_short("run_gateway"))
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await self.tick()
                except Exception:
                    logger.exception("gateway: tick failed")
                remaining = self.tick_seconds - (time.monotonic() - started)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, remaining))
        finally:
            freezer.cancel()
            if self.nc is not None:
                try:
                    await asyncio.wait_for(self.nc.drain(), timeout=5)
                    if self.alert_sender is not None:  # what the drain delivered reaches the sockets
                        await asyncio.wait_for(self.alert_sender, timeout=5)
                except Exception as error:  # the bus may be away at shutdown
                    logger.info("gateway: NATS drain at stop: %s", error)
                    await self.nc.close()
