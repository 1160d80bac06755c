"""The NATS → Channels bridge over real NATS and Redis, including a NATS restart, and `run_gateway` itself."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from cryptomon import messaging
from cryptomon.contract.messages import Heartbeat
from cryptomon.embedded import free_port
from gateway import bridge, feed

from .conftest import ROOT
from .test_gateway_consumer import connect_ready, cookie_headers, make_user, payload, receive, store


def alert(symbol: str = "BTCUSDT", open_time: int = 1_700_000_000_000, **extra) -> dict:
    return {
        "v": 1,
        "id": f"futures_pioneer_bull:{symbol}:{open_time}",
        "rule": "futures_pioneer_bull",
        "rule_name": "Pioneer Bull",
        "severity": "info",
        "direction": "bull",
        "symbol": symbol,
        "open_time": open_time,
        "triggered_at": open_time + 62_000,
        "price": 1.0,
        "description": "early bullish trend",
        "metrics": {"change_5m": 1.2, "volume_1d": 1e8},
        "owner": None,
        "late": False,
        **extra,
    }


def live(symbol: str, price: float, open_time: int = 1_700_000_060_000) -> dict:
    metrics = {"change_5m": price / 100, "volume_1d": 1e6, "rsi_14": 55.0, "macd": 0.1}
    return {
        "v": 1,
        "symbol": symbol,
        "open_time": open_time,
        "final": False,
        "late": False,
        "price": price,
        "metrics": metrics,
    }


def heartbeat(shard: str = "0/1", symbols_live: int = 300, lag_ms: int = 900, stale: bool = False) -> dict:
    """A `collector.status` message as the collector publishes it every 5 s."""
    return {
        "v": 1,
        "shard": shard,
        "symbols": symbols_live,
        "symbols_live": symbols_live,
        "connections": 2,
        "streams": symbols_live,
        "last_open_time": 1_700_000_000_000,
        "lag_ms": lag_ms,
        "stale": stale,
        "buffered": 0,
        "backfilling": 0,
        "venue_time": 1_700_000_061_000,
    }


class Listener:
    """A channel in the real channel layer, joined to the bridge's groups, as a web process's socket is."""

    def __init__(self):
        self.layer = get_channel_layer()

    async def join(self, *groups: str) -> Listener:
        self.channel = await self.layer.new_channel()
        for group in groups:
            await self.layer.group_add(group, self.channel)
        return self

    async def next(self, kind: str, timeout: float = 10) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.layer.receive(self.channel)
                if message["type"] == kind:
                    return message


@contextlib.asynccontextmanager
async def running(gateway: bridge.Bridge):
    task = asyncio.create_task(gateway.run())
    async with asyncio.timeout(15):
        while gateway.nc is None or not gateway.nc.is_connected:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
    try:
        yield gateway
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 15)


@pytest.fixture(autouse=True)
def _clean_redis(redis_client):
    return redis_client


async def test_the_bridge_creates_the_streams_forwards_alerts_and_coalesces_market_rows(private_nats):
    listener = await Listener().join(bridge.ALERTS_GROUP, bridge.MARKET_GROUP, bridge.FEED_GROUP)
    gateway = bridge.Bridge(get_channel_layer(), nats_url=private_nats.url, tick_seconds=0.2)
    async with running(gateway):
        nc, js = await messaging.connect_jetstream("test-publisher", private_nats.url)
        assert (await js.stream_info("ALERTS")).config.subjects == ["alerts.triggered.>"]
        await js.publish("alerts.triggered.BTCUSDT", messaging.encode(alert()))
        event = await listener.next("alert.batch")
        assert event["alerts"] == [alert()]
        assert [messaging.decode(t.encode()) for t in event["texts"]] == [alert()]

        for price in (1.0, 2.0, 3.0):  # three updates inside one tick → one row, the newest
            await nc.publish("metrics.live.BTCUSDT", messaging.encode(live("BTCUSDT", price)))
        await nc.publish("metrics.live.ETHUSDT", messaging.encode(live("ETHUSDT", 9.0)))
        await nc.flush()
        rows = (await listener.next("market.rows"))["rows"]
        assert [(r["symbol"], r["price"]) for r in rows] == [("BTCUSDT", 3.0), ("ETHUSDT", 9.0)]
        assert rows[0]["rsi_14"] == 55.0 and "macd" not in rows[0]
        assert [r["symbol"] for r in await feed.read_market()] == ["BTCUSDT", "ETHUSDT"]

        assert await feed.read_status() == feed.UNKNOWN_STATUS  # no collector heartbeat yet
        for shard, live_symbols, lag in (("0/2", 300, 800), ("1/2", 290, 1500)):
            await nc.publish("collector.status", messaging.encode(heartbeat(shard, live_symbols, lag)))
        await nc.publish("collector.status", messaging.encode({"v": 1, "shard": "x"}))  # bad: dropped
        await nc.flush()
        status = (await listener.next("feed.status"))["feed"]
        while status["symbols_live"] != 590:
            status = (await listener.next("feed.status"))["feed"]
        assert status == {
            "symbols_live": 590,
            "lag_ms": 1500,
            "last_open_time": 1_700_000_000_000,
            "stale": False,
        }
        assert await feed.read_status() == status

        await js.publish("alerts.triggered.BTCUSDT", b"not json")
        await js.publish("alerts.triggered.BTCUSDT", messaging.encode({"v": 1, "symbol": "BTCUSDT"}))
        await js.publish("alerts.triggered.BTCUSDT", messaging.encode(alert()))  # a duplicate id
        await js.publish("alerts.triggered.ETHUSDT", messaging.encode(alert("ETHUSDT")))
        event = await listener.next("alert.batch")
        assert [a["symbol"] for a in event["alerts"]] == ["ETHUSDT"]  # bad ones dropped, the duplicate too
        assert (
            gateway.stats.get("gateway_bad_messages_total") == 3
            and gateway.stats.get("gateway_duplicate_alerts_total") == 1
        )
        await nc.close()


async def test_final_bars_move_the_market_too_and_an_older_bar_never_replaces_a_newer_row(private_nats):
    """Previews are best effort (dropped while NATS is away, skipped when the minute's final is in first):
    the market table also takes each symbol's final bars, the newest open time winning."""
    listener = await Listener().join(bridge.MARKET_GROUP)
    gateway = bridge.Bridge(get_channel_layer(), nats_url=private_nats.url, tick_seconds=0.2)
    async with running(gateway):
        nc, js = await messaging.connect_jetstream("test-publisher", private_nats.url)
        final = {**live("BTCUSDT", 5.0, open_time=1_700_000_000_000), "final": True}
        await js.publish("metrics.calculated.BTCUSDT", messaging.encode(final))
        rows = (await listener.next("market.rows"))["rows"]
        assert [(r["symbol"], r["price"], r["open_time"]) for r in rows] == [
            ("BTCUSDT", 5.0, 1_700_000_000_000)
        ]
        await nc.publish(
            "metrics.live.BTCUSDT", messaging.encode(live("BTCUSDT", 6.0, open_time=1_700_000_060_000))
        )
        older = {**live("BTCUSDT", 1.0, open_time=1_700_000_000_000), "final": True}
        await js.publish("metrics.calculated.BTCUSDT", messaging.encode(older))  # arrives after the preview
        await nc.publish("metrics.live.ETHUSDT", messaging.encode(live("ETHUSDT", 9.0)))
        await nc.flush()
        rows = (await listener.next("market.rows"))["rows"]
        while "ETHUSDT" not in [r["symbol"] for r in rows]:
            rows = (await listener.next("market.rows"))["rows"]
        assert {r["symbol"]: r["price"] for r in await feed.read_market()} == {"BTCUSDT": 6.0, "ETHUSDT": 9.0}
        await nc.close()


async def test_a_burst_of_alerts_reaches_the_sockets_complete_in_order_in_few_messages(private_nats):
    listener = await Listener().join(bridge.ALERTS_GROUP)
    gateway = bridge.Bridge(get_channel_layer(), nats_url=private_nats.url, tick_seconds=0.2)
    burst = [alert(f"S{i:03d}USDT") for i in range(250)]
    async with running(gateway):
        nc, js = await messaging.connect_jetstream("test-publisher", private_nats.url)
        futures = await messaging.publish_pipelined(
            js, ((f"alerts.triggered.{a['symbol']}", messaging.encode(a), a["id"]) for a in burst)
        )
        assert await messaging.ack_errors(futures, 10) == [None] * len(burst)
        messages: list[dict] = []
        while sum(len(m["alerts"]) for m in messages) < len(burst):
            messages.append(await listener.next("alert.batch"))
        await nc.close()
    assert [a["id"] for m in messages for a in m["alerts"]] == [a["id"] for a in burst]
    assert all(len(m["alerts"]) == len(m["texts"]) <= bridge.ALERTS_PER_MESSAGE for m in messages)
    assert len(messages) < len(burst) / 10  # batched, not one channel-layer message per alert


@pytest.mark.django_db(transaction=True, databases=["default", "timeseries"])
async def test_after_a_nats_restart_every_socket_gets_a_fresh_snapshot(private_nats, settings):
    settings.WS_RESYNC_JITTER_SECONDS = 0
    me = await database_sync_to_async(make_user)("restart")
    socket, _, snapshot = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    assert snapshot["alerts"] == []
    gateway = bridge.Bridge(get_channel_layer(), nats_url=private_nats.url, tick_seconds=0.2)
    async with running(gateway):
        private_nats.stop()
        # run_alerts stored this while the bus was down: the bridge never saw it on NATS.
        missed = await database_sync_to_async(store)(payload(symbol="SOLUSDT"))
        private_nats.start()
        async with asyncio.timeout(30):
            frame = await receive(socket, timeout=30)
            while frame["type"] != "snapshot":
                frame = await receive(socket, timeout=30)
        assert frame["alerts"] == [missed]
        nc, js = await messaging.connect_jetstream("test-publisher", private_nats.url)
        await js.publish("alerts.triggered.ETHUSDT", messaging.encode(alert("ETHUSDT")))
        frame = await receive(socket, timeout=10)
        while frame["type"] != "alert":
            frame = await receive(socket, timeout=10)
        assert frame["alert"]["symbol"] == "ETHUSDT"  # and the bridge is subscribed again
        await nc.close()
    assert gateway.stats.get("gateway_resyncs_total") == 1
    await socket.disconnect()


async def test_after_a_redis_outage_the_bridge_tells_every_client_to_resync(private_nats):
    import redis.asyncio as aioredis

    listener = await Listener().join(bridge.RESYNC_GROUP, bridge.MARKET_GROUP)
    gone = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    gateway = bridge.Bridge(get_channel_layer(), nats_url=private_nats.url, tick_seconds=0.2, redis=gone)
    gateway.market.update(feed.market_row(live("BTCUSDT", 1.0)))
    await gateway.tick()  # Redis unreachable: nothing sent, the row kept for later
    assert not gateway.redis_ok
    gateway.redis = feed.redis_client()  # Redis is back
    await gateway.tick()  # sees it back: the whole table goes again on the next tick
    await gateway.tick()
    assert (await listener.next("market.rows"))["rows"][0]["symbol"] == "BTCUSDT"
    await listener.next("resync.event")
    await gone.aclose()


async def test_a_redis_restart_too_short_to_raise_still_rewrites_the_table_and_resyncs_every_client(
    private_nats, private_valkey
):
    """redis-py retries a dropped connection by itself, so the bridge sees no error: the server's run_id
    changes, and the resync waits until the web process has subscribed again (pub/sub keeps nothing)."""
    import redis.asyncio as aioredis
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = RedisPubSubChannelLayer(hosts=[private_valkey.url])
    listener = Listener()
    listener.layer = layer
    await listener.join(bridge.RESYNC_GROUP, bridge.MARKET_GROUP)
    client = aioredis.Redis.from_url(private_valkey.url)
    gateway = bridge.Bridge(layer, nats_url=private_nats.url, tick_seconds=0.2, redis=client)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        gateway.market.update(feed.market_row(live(symbol, 1.0)))
    await gateway.tick()
    assert len((await listener.next("market.rows"))["rows"]) == 2
    private_valkey.stop()
    private_valkey.start()  # same port, empty: the table copy is gone

    async def table_rows() -> int:
        try:
            return await client.hlen(feed.MARKET_KEY)
        except aioredis.ConnectionError:  # this test's own connection dropped with the restart
            return -1

    async with asyncio.timeout(60):
        while await table_rows() != 2 or gateway.stats.get("gateway_resyncs_total") == 0:
            await gateway.tick()
            await asyncio.sleep(0.2)
    await listener.next("resync.event", timeout=30)
    assert not gateway.resync_wanted.is_set()
    await client.aclose()
    await layer.flush()


async def test_the_bridge_starts_before_nats_and_connects_when_it_comes_up(private_nats):
    private_nats.stop()
    listener = await Listener().join(bridge.ALERTS_GROUP)
    gateway = bridge.Bridge(get_channel_layer(), nats_url=private_nats.url, tick_seconds=0.2)
    task = asyncio.create_task(gateway.run())
    await asyncio.sleep(0.5)
    assert gateway.nc is None
    private_nats.start()
    async with asyncio.timeout(15):
        while gateway.nc is None:
            await asyncio.sleep(0.05)
    nc, js = await messaging.connect_jetstream("test-publisher", private_nats.url)
    await js.publish("alerts.triggered.BTCUSDT", messaging.encode(alert()))
    assert [a["id"] for a in (await listener.next("alert.batch"))["alerts"]] == [alert()["id"]]
    await nc.close()
    gateway.stop()
    await asyncio.wait_for(task, 15)


def test_the_feed_status_folds_every_collector_shards_heartbeat():
    now = [1000.0]
    tracker = feed.FeedTracker(stale_after=15, clock=lambda: now[0])
    assert tracker.status() == feed.UNKNOWN_STATUS
    tracker.saw(Heartbeat.parse(heartbeat("0/2", 300, 800) | {"last_open_time": 1_700_000_060_000}))
    tracker.saw(Heartbeat.parse(heartbeat("1/2", 290, 1500)))
    both = {"symbols_live": 590, "lag_ms": 1500, "last_open_time": 1_700_000_000_000, "stale": False}
    assert tracker.status() == both  # the slowest shard decides the lag and the complete minute
    now[0] = 1010.0
    tracker.saw(Heartbeat.parse(heartbeat("0/2", 300, 800)))
    now[0] = 1020.0  # shard 1 silent for 20 s (> 15): the feed is stale, its symbols are not live
    assert tracker.status() == {
        "symbols_live": 300,
        "lag_ms": 800,
        "last_open_time": 1_700_000_000_000,
        "stale": True,
    }
    tracker.saw(Heartbeat.parse(heartbeat("0/1", 600, 700)))  # re-sharded to one collector
    assert tracker.status() == {
        "symbols_live": 600,
        "lag_ms": 700,
        "last_open_time": 1_700_000_000_000,
        "stale": False,
    }
    tracker.saw(Heartbeat.parse(heartbeat("0/1", 600, 700, stale=True)))  # the collector says so
    assert tracker.status()["stale"] is True
    now[0] = 1100.0  # every collector silent: unknown, but the last complete minute stays known
    assert tracker.status() == {**feed.UNKNOWN_STATUS, "last_open_time": 1_700_000_000_000}


@pytest.mark.parametrize(
    "bad, problem",
    [
        ({"shard": "2/2"}, "shard"),
        ({"symbols_live": -1}, "symbols_live"),
        ({"lag_ms": "slow"}, "lag_ms"),
        ({"last_open_time": 1.5}, "last_open_time"),
        ({"stale": None}, "stale"),
    ],
)
def test_a_bad_heartbeat_is_refused_naming_the_field(bad, problem):
    with pytest.raises(ValueError, match=problem):
        Heartbeat.parse(heartbeat() | bad)


def test_run_gateway_bridges_until_sigterm(redis_client, jetstream):
    """The management command as an operator runs it: alerts reach the channel layer; SIGTERM stops it."""

    async def scenario(process):
        listener = await Listener().join(bridge.ALERTS_GROUP)
        nc = await messaging.connect("test-publisher")
        js = nc.jetstream()
        async with asyncio.timeout(90):  # a loaded machine boots Django slowly
            for attempt in itertools.count():  # until the command is subscribed and bridging
                # a new id each time: the bridge drops a repeated one
                await js.publish("alerts.triggered.BTCUSDT", messaging.encode(alert(open_time=attempt)))
                try:
                    event = await listener.next("alert.batch", timeout=0.5)
                    break
                except TimeoutError:
                    continue
        await nc.close()
        return event

    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "run_gateway"],
        cwd=ROOT,
        env={**os.environ, "GATEWAY_TICK_SECONDS": "0.2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        event = asyncio.run(scenario(process))
        assert [a["symbol"] for a in event["alerts"]] == ["BTCUSDT"]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
        assert process.returncode == 0, output
        assert "run_gateway: stopped" in output
    finally:
        if process.poll() is None:
            process.kill()
