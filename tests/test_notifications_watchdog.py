"""The operator watchdog: each condition of docs/notifications.md raises its operator alert when true and resolves it when it
clears, with a message naming what is wrong. Real NATS (heartbeats, JetStream consumers), PostgreSQL
(candles_1m, symbols), Redis (alert state) and, for the beat task, a real Celery worker and HTTP receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from nats.js.api import AckPolicy

from collector.emulator import EmulatorServer
from collector.rest import RestClient, RestError
from cryptomon import messaging
from cryptomon.contract import subjects
from metrics.models import StoredCandle
from notifications import operator, watchdog
from tests.dashboard_data import candles, symbol
from tests.test_notifications_delivery import Receiver, celery_worker, wait_for  # noqa: F401 - fixture

DB = pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)


def heartbeat(shard: str = "0/1", **fields) -> dict:
    """A `collector.status` payload as the collector publishes it, healthy unless told otherwise."""
    now = int(time.time() * 1000)
    return {
        "v": 1,
        "shard": shard,
        "symbols": 3,
        "symbols_live": 3,
        "connections": 1,
        "streams": 4,
        "last_open_time": now // 60_000 * 60_000 - 60_000,
        "lag_ms": 900,
        "stale": False,
        "buffered": 0,
        "backfilling": 0,
        "venue_time": now,
        "rest": "ok",
        "banned_until": None,
        **fields,
    }


class Collector:
    """Publishes heartbeats on the real NATS from a thread, as running collector shards do (sped up)."""

    def __init__(self):
        self.beats: dict[str, dict] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    def say(self, *beats: dict) -> None:
        self.beats = {beat["shard"]: beat for beat in beats}

    async def _run(self) -> None:
        nc = await messaging.connect("test-collector")
        try:
            while not self.stopped.is_set():
                for beat in list(self.beats.values()):
                    await nc.publish(subjects.COLLECTOR_STATUS, messaging.encode(beat))
                await nc.flush()
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)


@pytest.fixture
def watch(settings, redis_client):
    """Fresh alert state, fresh streams, short heartbeat reads, no operator target (alerts are logged)."""
    settings.OPERATOR_HEARTBEAT_WAIT_SECONDS = 1.0
    for name in ("OPERATOR_WEBHOOK_URL", "OPERATOR_DISCORD_URL", "OPERATOR_SLACK_URL"):
        setattr(settings, name, "")
    settings.OPERATOR_TELEGRAM_CHAT_ID = ""
    settings.OPERATOR_EMAIL = ""

    async def fresh_streams():
        nc = await messaging.connect("test")
        js = nc.jetstream()
        for name in subjects.STREAMS:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await messaging.ensure_streams(js)
        await nc.close()

    asyncio.run(fresh_streams())
    yield settings
    redis_client.flushdb()


@pytest.fixture
def collector():
    publisher = Collector()
    yield publisher
    publisher.stop()


def active() -> dict[str, str]:
    return {key: state["message"] for key, state in operator.active_operator_alerts().items()}


# --- feed stale --------------------------------------------------------------------------------------------


@DB
def test_a_collector_saying_stale_or_lagging_raises_feed_stale_and_a_healthy_heartbeat_resolves_it(
    watch, collector
):
    collector.say(heartbeat(stale=True, lag_ms=150_000, symbols_live=0, last_open_time=1_767_225_600_000))
    watchdog.check()
    message = active()[watchdog.FEED_STALE]
    assert "collector shard 0/1's next candle is " in message
    assert "s overdue (newest candle 2026-01-01 00:00:00 UTC, 0 of 3 symbols live)" in message
    assert "collector shard 0/1 receives candles 150 s behind the venue" in message

    collector.say(heartbeat())
    watchdog.check()
    assert watchdog.FEED_STALE not in active()


@DB
def test_silence_on_collector_status_raises_feed_stale_after_the_threshold_and_resolves_on_a_heartbeat(
    watch, collector
):
    watch.OPERATOR_FEED_STALE_SECONDS = 1.0
    watchdog.check()  # the first silent look only starts the clock
    assert watchdog.FEED_STALE not in active()
    time.sleep(1.2)
    watchdog.check()
    assert "no collector heartbeat on collector.status for " in active()[watchdog.FEED_STALE]

    collector.say(heartbeat(shard="0/2"), heartbeat(shard="1/2"))
    watchdog.check()
    assert watchdog.FEED_STALE not in active()

    collector.say(heartbeat(shard="0/2"))  # shard 1 of 2 dies
    time.sleep(1.2)
    watchdog.check()
    message = active()[watchdog.FEED_STALE]
    assert message.startswith("no heartbeat on collector.status from shard 1/2 for ")
    assert "0/2" not in message

    collector.say(heartbeat(shard="0/1"))  # re-sharded to one collector: the old layout is forgotten
    watchdog.check()
    assert watchdog.FEED_STALE not in active()


@DB
def test_storage_falling_behind_raises_feed_stale_while_symbols_trade(watch):
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    symbol("BTCUSDT")
    candles("BTCUSDT", 5, end=now - timedelta(minutes=10))
    beats = {"0/1": heartbeat()}
    watchdog.apply(watchdog.feed_stale(beats))
    message = active()[watchdog.FEED_STALE]
    newest = (now - timedelta(minutes=11)).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert message.startswith(f"newest candle in candles_1m opened at {newest}, closed ")
    assert message.endswith("while 1 symbols are TRADING")

    candles("BTCUSDT", 10, end=now)
    watchdog.apply(watchdog.feed_stale(beats))
    assert watchdog.FEED_STALE not in active()


def venue_heartbeat(rate: float, age_seconds: float, lag_seconds: float, venue_ms: int) -> dict:
    """A heartbeat from a collector whose venue clock runs `rate` times the wall clock (the emulator's
    speed): its newest candle closed `age_seconds` and its lag is `lag_seconds`, both in venue seconds."""
    last_open = (venue_ms - int(age_seconds * 1000)) // 60_000 * 60_000 - 60_000
    return heartbeat(
        venue_time=venue_ms,
        clock_rate=rate,
        last_open_time=last_open,
        lag_ms=int(lag_seconds * 1000),
        stale=age_seconds > 180,  # the collector's own flag: three venue minutes
    )


@DB
def test_at_speed_ten_a_warm_up_hiccup_measured_in_venue_minutes_is_not_feed_stale(watch):
    """Venue minutes pass ten times faster than the operator's limit: 600 venue seconds behind is 60 s."""
    venue_now = int(time.time() * 1000) + 3_600_000  # an accelerated emulator runs ahead of the wall
    symbol("BTCUSDT")
    stored_until = datetime.fromtimestamp(venue_now / 1000, UTC).replace(second=0, microsecond=0)
    candles("BTCUSDT", 5, end=stored_until - timedelta(minutes=9))
    fast = {"0/1": venue_heartbeat(10, age_seconds=600, lag_seconds=600, venue_ms=venue_now)}
    for _ in range(2):
        condition = watchdog.feed_stale(fast)
        assert condition.problem is None, condition.problem

    # The same venue durations from a collector on Binance's clock are ten minutes: stale.
    real = {"0/1": venue_heartbeat(1, age_seconds=600, lag_seconds=600, venue_ms=venue_now)}
    problem = watchdog.feed_stale(real).problem
    assert "collector shard 0/1's next candle is " in problem
    assert "collector shard 0/1 receives candles 600 s behind the venue" in problem
    assert "newest candle in candles_1m opened at " in problem


@DB
def test_a_backfilling_shard_publishing_old_minutes_is_not_feed_stale_until_it_is_done(watch):
    """Warm-up at speed 10: the newest candle published is hours old while the backfill runs."""
    venue_now = int(time.time() * 1000)
    hours_old = venue_heartbeat(10, age_seconds=8 * 3600, lag_seconds=2, venue_ms=venue_now)
    assert watchdog.feed_stale({"0/1": {**hours_old, "backfilling": 57, "symbols_live": 3}}).problem is None
    problem = watchdog.feed_stale({"0/1": {**hours_old, "backfilling": 0}}).problem
    assert "collector shard 0/1's next candle is " in problem


@DB
def test_at_speed_ten_the_limit_still_holds_in_wall_seconds(watch):
    venue_now = int(time.time() * 1000)
    stuck = {"0/1": venue_heartbeat(10, age_seconds=3000, lag_seconds=1500, venue_ms=venue_now)}
    problem = watchdog.feed_stale(stuck).problem
    overdue = re.search(r"collector shard 0/1's next candle is (\d+) s overdue", problem)
    assert 290 <= int(overdue.group(1)) <= 300  # about 3000 venue s, less the minute it was not due, / 10
    assert "collector shard 0/1 receives candles 150 s behind the venue" in problem


@DB
def test_storage_behind_while_candles_are_on_their_way_is_a_backlog_not_feed_stale(watch):
    """After a start the collector buffers and JetStream holds thousands of candles: storage is hours behind
    while they drain (consumer_lag's business). With nothing on its way, the same storage is stale."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    symbol("BTCUSDT")
    candles("BTCUSDT", 5, end=now - timedelta(hours=6))
    waiting = [watchdog.ConsumerLag("CANDLES", "metrics-store-p0of1", 70.0, pending=100_276)]
    assert watchdog.feed_stale({"0/1": heartbeat()}, lags=waiting).problem is None
    assert watchdog.feed_stale({"0/1": heartbeat(buffered=112_719)}, lags=[]).problem is None
    drained = [watchdog.ConsumerLag("CANDLES", "metrics-store-p0of1", 0.0)]
    problem = watchdog.feed_stale({"0/1": heartbeat()}, lags=drained).problem
    assert problem.startswith("newest candle in candles_1m opened at ")


@DB
def test_a_shard_that_has_published_nothing_yet_is_feed_stale_only_once_that_lasts_the_limit(
    watch, redis_client
):
    warming = {"0/1": heartbeat(last_open_time=None, lag_ms=None, stale=True, symbols_live=0)}
    assert watchdog.feed_stale(warming).problem is None
    since = int(redis_client.hget(watchdog.NO_CANDLE_KEY, "0/1"))
    redis_client.hset(watchdog.NO_CANDLE_KEY, "0/1", since - 121_000)  # as if started 121 s earlier
    assert watchdog.feed_stale(warming).problem.startswith("collector shard 0/1 published no candle in 12")
    assert watchdog.feed_stale({"0/1": heartbeat()}).problem is None
    assert not redis_client.hexists(watchdog.NO_CANDLE_KEY, "0/1")


# --- consumer lag ------------------------------------------------------------------------------------------


async def test_a_consumer_with_an_old_unacknowledged_message_raises_consumer_lag_naming_it(
    settings, jetstream, redis_client
):
    settings.OPERATOR_CONSUMER_LAG_SECONDS = 1.0
    _, js = jetstream
    await messaging.ensure_consumer(
        js, "CANDLES", "metrics-p0of1", ["candles.1m.>"], ack_policy=AckPolicy.EXPLICIT
    )
    first = await js.publish("candles.1m.BTCUSDT", b'{"v":1}')
    await js.publish("candles.1m.ETHUSDT", b'{"v":1}')
    assert not [c for c in watchdog.consumer_lag(await watchdog.consumer_lags(js)) if c.problem]

    await asyncio.sleep(1.3)
    (lag,) = watchdog.consumer_lag(await watchdog.consumer_lags(js))
    assert lag.key == "consumer_lag:CANDLES/metrics-p0of1"
    assert lag.problem.startswith("consumer metrics-p0of1 on CANDLES is 1 s behind: oldest unacknowledged ")
    assert f"message candles.1m.BTCUSDT (stream seq {first.seq}) stored 20" in lag.problem
    assert lag.problem.endswith("UTC, 2 pending")
    watchdog.apply(lag)
    assert lag.key in active()

    subscription = await js.pull_subscribe_bind("metrics-p0of1", stream="CANDLES")
    for message in await subscription.fetch(2, timeout=5):
        await message.ack_sync()
    (lag,) = watchdog.consumer_lag(await watchdog.consumer_lags(js))
    assert lag.problem is None
    watchdog.apply(lag)
    assert lag.key not in active()

    watchdog.apply(watchdog.Condition(lag.key, "raised again before the consumer is deleted"))
    await js.delete_consumer("CANDLES", "metrics-p0of1")
    (gone,) = watchdog.consumer_lag(await watchdog.consumer_lags(js))
    assert gone == watchdog.Condition(lag.key)  # a deleted consumer's alert is resolved


async def test_an_old_message_of_another_shard_is_not_counted_as_this_shards_lag(settings, jetstream):
    settings.OPERATOR_CONSUMER_LAG_SECONDS = 1.0
    _, js = jetstream
    explicit = {"ack_policy": AckPolicy.EXPLICIT}
    await messaging.ensure_consumer(
        js, "CANDLES", "metrics-p0of2", ["candles.1m.AAAUSDT", "candles.1m.CCCUSDT"], **explicit
    )
    await messaging.ensure_consumer(js, "CANDLES", "metrics-p1of2", ["candles.1m.BBBUSDT"], **explicit)
    await js.publish("candles.1m.BBBUSDT", b'{"v":1}')
    await asyncio.sleep(1.3)
    await js.publish("candles.1m.CCCUSDT", b'{"v":1}')
    # The server counts a new message into a consumer's pending a moment after storing it.
    for _ in range(100):
        if (await js.consumer_info("CANDLES", "metrics-p0of2")).num_pending:
            break
        await asyncio.sleep(0.05)
    lags = {lag.consumer: lag for lag in await watchdog.consumer_lags(js)}
    assert lags["metrics-p0of2"].age_seconds < 1.0 and lags["metrics-p0of2"].subject == "candles.1m.CCCUSDT"
    assert lags["metrics-p1of2"].age_seconds > 1.0 and lags["metrics-p1of2"].subject == "candles.1m.BBBUSDT"


def test_subjects_match_like_nats_wildcards():
    assert watchdog.subject_matches("candles.1m.>", "candles.1m.BTCUSDT")
    assert watchdog.subject_matches("candles.*.BTCUSDT", "candles.1m.BTCUSDT")
    assert not watchdog.subject_matches("candles.1m.>", "candles.1m")
    assert not watchdog.subject_matches("candles.1m.ETHUSDT", "candles.1m.BTCUSDT")
    assert not watchdog.subject_matches("candles.1m", "candles.1m.BTCUSDT")


# --- REST 418 / 451 ----------------------------------------------------------------------------------------


def test_rest_ban_and_region_block_in_a_heartbeat_raise_their_alerts_and_clear_when_rest_is_ok(watch):
    until = 1_767_229_200_000  # 2026-01-01 01:00 UTC
    beats = {"0/2": heartbeat("0/2", rest="banned", banned_until=until), "1/2": heartbeat("1/2")}
    banned = watchdog.rest_banned(beats)
    assert banned.problem == (
        "Binance banned the collector's IP from REST (HTTP 418): shard 0/2 until 2026-01-01 01:00:00 UTC; "
        "backfill and hole repair wait until then"
    )
    blocked = watchdog.rest_region_blocked({"1/2": heartbeat("1/2", rest="region_blocked")})
    assert blocked.problem == (
        "Binance refuses this region (HTTP 451) for collector shard 1/2: no backfill or hole repair is "
        "possible; run the collector from an allowed region"
    )
    watchdog.apply(banned)
    watchdog.apply(blocked)
    assert {watchdog.REST_BANNED, watchdog.REST_REGION_BLOCKED} <= set(active())

    for condition in (watchdog.rest_banned({}), watchdog.rest_region_blocked({})):
        watchdog.apply(condition)  # no heartbeat: the REST state is unknown, alerts keep their state
    assert {watchdog.REST_BANNED, watchdog.REST_REGION_BLOCKED} <= set(active())

    healthy = {"0/1": heartbeat()}
    watchdog.apply(watchdog.rest_banned(healthy))
    watchdog.apply(watchdog.rest_region_blocked(healthy))
    assert not {watchdog.REST_BANNED, watchdog.REST_REGION_BLOCKED} & set(active())


async def test_the_collectors_rest_state_says_banned_until_the_418_ban_ends():
    async with EmulatorServer(symbols=["AAAUSDT"], speed=60.0, seed=1) as emu:
        rest = RestClient(emu.rest_url, clock_rate=60.0)
        await rest.start()
        try:
            assert rest.state() == "ok"
            until = emu.faults.ban(minutes=1)
            with pytest.raises(RestError, match="418"):
                await rest.exchange_info()
            assert rest.state() == "banned" and rest.banned_until_ms == until
            async with asyncio.timeout(10):  # one venue minute = 1 s here; a little more for clock skew
                while emu.market.now_ms() < until + 3000:
                    await asyncio.sleep(0.02)
            await rest.exchange_info()
            assert rest.state() == "ok"
        finally:
            await rest.close()


# --- forced gaps -------------------------------------------------------------------------------------------


@DB
def test_minutes_missing_between_stored_candles_past_the_gap_timeout_raise_gaps_forced(watch):
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    symbol("BTCUSDT")
    symbol("ETHUSDT")
    candles("BTCUSDT", 20, end=now - timedelta(minutes=11))
    candles("BTCUSDT", 10, end=now)  # minute now-11 is missing
    candles("ETHUSDT", 30, end=now)
    returned = symbol("SOLUSDT")  # left TRADING and came back: its absence is not a gap
    returned.history_start = now - timedelta(minutes=20)
    returned.save()
    candles("SOLUSDT", 10, end=now - timedelta(minutes=40))
    candles("SOLUSDT", 20, end=now)

    watch.METRICS_GAP_TIMEOUT_SECONDS = 900.0  # the engine is still waiting for the missing minute
    assert watchdog.forced_gaps().problem is None

    watch.METRICS_GAP_TIMEOUT_SECONDS = 1.0
    gaps = watchdog.forced_gaps()
    hole = (now - timedelta(minutes=11)).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert gaps.problem == (
        "1 minutes missing in candles_1m for 1 symbols (permanent gaps in the metrics): "
        f"BTCUSDT 1 min from {hole}"
    )
    watchdog.apply(gaps)
    assert active()[watchdog.GAPS_FORCED] == gaps.problem

    candles("BTCUSDT", 1, end=now - timedelta(minutes=10))  # the collector's hole scan mended it
    watchdog.apply(watchdog.forced_gaps())
    assert watchdog.GAPS_FORCED not in active()
    assert StoredCandle.objects.filter(symbol="BTCUSDT").count() == 31


# --- the beat task -----------------------------------------------------------------------------------------


@DB
@pytest.mark.usefixtures("celery_worker")
def test_the_beat_task_sends_a_rest_ban_to_the_operator_channel_and_its_resolution(watch, collector):
    from cryptomon.celery import app
    from notifications.tasks import check_operator_conditions

    assert app.conf.beat_schedule["check-operator-conditions"]["task"] == check_operator_conditions.name
    receiver = Receiver()
    try:
        watch.OPERATOR_WEBHOOK_URL = receiver.url + "/ops"
        watch.OPERATOR_WEBHOOK_SECRET = "operator-secret-0123456789"
        collector.say(heartbeat(rest="banned", banned_until=1_767_229_200_000))
        check_operator_conditions.delay()
        wait_for(lambda: receiver.requests, what="the raised REST alert")
        raised = json.loads(receiver.requests[0]["body"])
        assert (raised["key"], raised["state"]) == ("rest_banned", "raised")
        assert "(HTTP 418): shard 0/1 until 2026-01-01 01:00:00 UTC" in raised["message"]

        collector.say(heartbeat())
        check_operator_conditions.delay()
        wait_for(lambda: len(receiver.requests) == 2, what="the resolution")
        resolved = json.loads(receiver.requests[1]["body"])
        assert (resolved["key"], resolved["state"]) == ("rest_banned", "resolved")
        assert resolved["message"].startswith("resolved after ")
        assert [json.loads(r["body"])["key"] for r in receiver.requests] == ["rest_banned", "rest_banned"]
    finally:
        receiver.close()
