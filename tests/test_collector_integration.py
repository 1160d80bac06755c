"""The collector against the Binance emulator over real sockets, a real NATS and a real PostgreSQL.

The emulator runs at 60× (a venue minute per wall second), so each test covers tens of market minutes in
seconds. What a user would notice is checked: every minute of every symbol on `candles.1m.<SYMBOL>` exactly
once, in order, without gaps, equal to the venue's own candles.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from collector.worker import Collector, CollectorConfig
from cryptomon import messaging
from cryptomon.contract import subjects
from tests import venue_adapter as venue_mod

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "timeseries"])]

MINUTE = 60_000
SPEED = 60.0
IN_FLIGHT_MS = 1_000  # venue ms: 17 ms of wall time at 60×


async def in_thread(function, *args):
    """A database call from async test code; its thread's connection is closed so teardown can drop the DB."""

    def call():
        try:
            return function(*args)
        finally:
            connections.close_all()

    return await sync_to_async(call, thread_sensitive=False)()


def config_for(venue, **changes) -> CollectorConfig:
    values = {
        "rest_url": venue.rest_url,
        "ws_url": venue.ws_url,
        "clock_rate": SPEED,
        "warmup_minutes": 20,
        "watchdog_seconds": 3.0,
        "backoff_base_seconds": 0.05,
        "backoff_cap_seconds": 0.5,
        "stagger_seconds": 0.02,
        "hole_scan_seconds": 3600.0,
        "universe_refresh_seconds": 2.0,
        "retry_max_seconds": 0.5,
        "time_sync_seconds": 2.0,
        "status_interval_seconds": 0.5,
        "hole_grace_minutes": 3,
        "ack_timeout_seconds": 1.0,
        "nats_reconnect_wait_seconds": 0.1,
    }
    values.update(changes)
    return CollectorConfig(**values)


@contextlib.asynccontextmanager
async def running(config: CollectorConfig):
    collector = Collector(config)
    task = asyncio.create_task(collector.run())
    try:
        await asyncio.wait_for(collector.started.wait(), 30)
        yield collector
    finally:
        collector.stop()
        await asyncio.wait_for(task, 30)


async def published(js, subject: str = "candles.1m.>") -> dict[str, list[dict]]:
    """Every candle on the CANDLES stream, per symbol, in stream order."""
    info = await js.stream_info("CANDLES")
    by_symbol: dict[str, list[dict]] = {}
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        with contextlib.suppress(Exception):
            message = await js.get_msg("CANDLES", seq)
            payload = messaging.decode(message.data)
            by_symbol.setdefault(payload["symbol"], []).append(payload)
    return by_symbol


async def wait_until(predicate, timeout: float = 30.0, interval: float = 0.2):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


def assert_contiguous(candles: list[dict]) -> None:
    times = [c["open_time"] for c in candles]
    assert times == list(range(times[0], times[0] + MINUTE * len(times), MINUTE)), _first_break(times)


def _first_break(times: list[int]) -> str:
    for a, b in itertools.pairwise(times):
        if b - a != MINUTE:
            return f"after {a}: {b} ({(b - a) / MINUTE:+.0f} minutes)"
    return ""


def assert_equal_to_venue(venue, candles: list[dict]) -> None:
    for candle in candles:
        if candle["source"] == "filled":
            continue
        truth = venue.truth(candle["symbol"], candle["open_time"])
        assert truth is not None, f"{candle['symbol']} {candle['open_time']} is not a venue candle"
        for name in (
            "open",
            "high",
            "low",
            "close",
            "volume",
            "quote_volume",
            "taker_buy_volume",
            "taker_buy_quote_volume",
        ):
            assert Decimal(str(candle[name])) == Decimal(str(truth[name])), (name, candle, truth)
        assert candle["trades"] == truth["trades"]
        assert candle["close_time"] == candle["open_time"] + MINUTE - 1


async def newest_times(js, symbols) -> dict[str, int]:
    out = {}
    for symbol in symbols:
        payload = await messaging.last_payload(js, "CANDLES", subjects.candle_subject(symbol))
        out[symbol] = payload["open_time"] if payload else 0
    return out


async def caught_up(js, venue, symbols, minutes_behind: int = 2) -> bool:
    newest = await newest_times(js, symbols)
    now_minute = venue.now_ms() // MINUTE * MINUTE
    return all(t >= now_minute - minutes_behind * MINUTE for t in newest.values())


# --- tests ------------------------------------------------------------------------------------------------


async def test_every_minute_arrives_once_in_order_equal_to_the_venue_through_faults(jetstream):
    _nc, js = jetstream
    symbols = ["AAAUSDT", "BBBUSDT", "CCCUSDT", "币安人生USDT"]
    async with (
        venue_mod.start(symbols, speed=SPEED) as venue,
        running(config_for(venue, streams_per_connection=2)) as collector,
    ):
        await wait_until(lambda: caught_up(js, venue, symbols))
        venue.send_garbage()
        await venue.drop_all_connections()  # nothing is replayed: the collector must backfill
        await asyncio.sleep(1.5)
        venue.skip_minutes("BBBUSDT", venue.now_ms() // MINUTE * MINUTE + MINUTE, 2)  # maintenance
        await asyncio.sleep(4)
        await wait_until(lambda: caught_up(js, venue, symbols))
        invalid = collector.stats.total("collector_invalid_frames_total")
        reconnects = collector.stats.total("collector_reconnects_total")
    by_symbol = await published(js)
    assert sorted(by_symbol) == sorted(symbols)
    for symbol in symbols:
        candles = by_symbol[symbol]
        assert len(candles) >= 20, symbol
        assert_contiguous(candles)
        assert_equal_to_venue(venue, candles)
    sources = {c["source"] for c in by_symbol["BBBUSDT"]}
    filled = [c for c in by_symbol["BBBUSDT"] if c["source"] == "filled"]
    assert len(filled) == 2 and "ws" in sources and "rest" in sources
    for c in filled:
        previous = next(p for p in by_symbol["BBBUSDT"] if p["open_time"] == c["open_time"] - MINUTE)
        assert c["open"] == c["high"] == c["low"] == c["close"] == previous["close"]
        assert c["volume"] == c["quote_volume"] == c["trades"] == 0
    assert invalid >= 1 and reconnects >= 2


async def test_a_stalled_connection_is_replaced_and_its_minutes_backfilled(jetstream):
    _nc, js = jetstream
    symbols = ["AAAUSDT", "BBBUSDT"]
    async with (
        venue_mod.start(symbols, speed=SPEED) as venue,
        running(config_for(venue, streams_per_connection=1, watchdog_seconds=1.0)) as collector,
    ):
        await wait_until(lambda: caught_up(js, venue, symbols))
        venue.stall_one_connection()
        await wait_until(
            lambda: _positive(collector.stats.total("collector_watchdog_replacements_total")), 10
        )
        await asyncio.sleep(2)
        await wait_until(lambda: caught_up(js, venue, symbols))
    by_symbol = await published(js)
    for symbol in symbols:
        assert_contiguous(by_symbol[symbol])
        assert_equal_to_venue(venue, by_symbol[symbol])


async def _positive(value) -> bool:
    return value > 0


async def test_a_429_stops_rest_until_the_next_venue_minute_and_nothing_is_lost(jetstream):
    _nc, js = jetstream
    symbols = ["AAAUSDT"]
    async with venue_mod.start(symbols, speed=SPEED) as venue, running(config_for(venue)) as collector:
        await wait_until(lambda: caught_up(js, venue, symbols))
        venue.answer_429(times=1)
        await venue.drop_all_connections()
        await wait_until(lambda: _positive(collector.rest.stats.rate_limited), 10)
        refused_at = venue.last_limited_at_ms()

        # A request already on its way when the 429 went out (another caller's) arrives just after it;
        # what matters is that nothing new is sent before the next venue minute.
        async def requests_after() -> list[int]:
            return [t for t in venue.rest_request_times_ms() if t > refused_at + IN_FLIGHT_MS]

        after = await wait_until(requests_after, 10)
        await wait_until(lambda: caught_up(js, venue, symbols))
    assert after and min(after) >= (refused_at // MINUTE + 1) * MINUTE  # no request before the next minute
    candles = (await published(js))["AAAUSDT"]
    assert_contiguous(candles)
    assert_equal_to_venue(venue, candles)


async def test_listing_and_delisting_happen_without_a_restart(jetstream):
    from collector.models import Symbol

    _nc, js = jetstream
    async with (
        venue_mod.start(["AAAUSDT", "BBBUSDT"], speed=SPEED) as venue,
        running(config_for(venue)) as collector,
    ):
        await wait_until(lambda: caught_up(js, venue, ["AAAUSDT", "BBBUSDT"]))
        await venue.list_symbol("NEWUSDT")
        await venue.delist_symbol("BBBUSDT")
        await wait_until(lambda: caught_up(js, venue, ["NEWUSDT"]), 20)
        assert "BBBUSDT" not in collector.symbol_set and "NEWUSDT" in collector.symbol_set
        assert collector.pool.symbols() == {"AAAUSDT", "NEWUSDT"}
    rows = {row.symbol: row for row in await in_thread(lambda: list(Symbol.objects.all()))}
    assert rows["NEWUSDT"].trading and not rows["BBBUSDT"].trading
    assert_contiguous((await published(js))["NEWUSDT"])


async def test_a_restarted_collector_resumes_without_duplicates_or_gaps(jetstream):
    _nc, js = jetstream
    symbols = ["AAAUSDT", "BBBUSDT"]
    async with venue_mod.start(symbols, speed=SPEED) as venue:
        async with running(config_for(venue)):
            await wait_until(lambda: caught_up(js, venue, symbols))
        await asyncio.sleep(3)  # three venue minutes without a collector
        async with running(config_for(venue)):
            await asyncio.sleep(1)
            await wait_until(lambda: caught_up(js, venue, symbols))
    by_symbol = await published(js)
    for symbol in symbols:
        assert_contiguous(by_symbol[symbol])
        assert_equal_to_venue(venue, by_symbol[symbol])


async def test_a_nats_restart_loses_nothing(private_nats):
    symbols = ["AAAUSDT", "BBBUSDT"]
    async with (
        venue_mod.start(symbols, speed=SPEED) as venue,
        running(config_for(venue, nats_url=private_nats.url, buffer_limit=3)) as collector,
    ):
        nc, js = await messaging.connect_jetstream("test", private_nats.url, reconnect_time_wait=0.1)
        await wait_until(lambda: caught_up(js, venue, symbols))
        await nc.close()
        private_nats.stop()
        await asyncio.sleep(4)  # four venue minutes while NATS is away: more than the buffer holds
        private_nats.start()
        nc, js = await messaging.connect_jetstream("test", private_nats.url)
        await wait_until(lambda: caught_up(js, venue, symbols), 40)
        dropped = collector.stats.total("collector_candles_dropped_total")
        by_symbol = await published(js)
        await nc.close()
    assert dropped >= 1  # the buffer limit was reached and counted
    for symbol in symbols:
        assert_contiguous(by_symbol[symbol])
        assert_equal_to_venue(venue, by_symbol[symbol])


async def test_the_hole_scan_republishes_minutes_missing_from_candles_1m(jetstream):
    from metrics.models import StoredCandle

    nc, js = jetstream
    symbols = ["AAAUSDT"]
    async with venue_mod.start(symbols, speed=SPEED) as venue, running(config_for(venue)) as collector:
        await wait_until(lambda: caught_up(js, venue, symbols))
        stored = (await published(js))["AAAUSDT"]
        hole = stored[5:8]
        kept = [c for c in stored if c not in hole]
        await in_thread(_store, StoredCandle, kept)
        # Core subscribers see every publish; JetStream itself would drop these as duplicates only because
        # the originals are seconds old here (in production a hole is older than the 10-minute window).
        seen: list[dict] = []

        async def collect(msg) -> None:
            seen.append(messaging.decode(msg.data))

        subscription = await nc.subscribe("candles.1m.AAAUSDT", cb=collect)
        repaired = await collector.sequencer.hole_scan()
        await collector.publisher.drain()
        await nc.flush()
        await asyncio.sleep(0.3)
        await subscription.unsubscribe()
    assert repaired == 3
    repairs = [c for c in seen if c["open_time"] <= hole[-1]["open_time"]]
    assert [c["open_time"] for c in repairs] == [c["open_time"] for c in hole]
    assert {c["source"] for c in repairs} == {"rest"}
    assert_equal_to_venue(venue, repairs)


def _store(model, candles: list[dict]) -> None:
    def dt(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)

    model.objects.bulk_create(
        [
            model(
                symbol=c["symbol"],
                time=dt(c["open_time"]),
                open=Decimal(str(c["open"])),
                high=Decimal(str(c["high"])),
                low=Decimal(str(c["low"])),
                close=Decimal(str(c["close"])),
                volume=Decimal(str(c["volume"])),
                quote_volume=Decimal(str(c["quote_volume"])),
                trades=c["trades"],
                taker_buy_volume=Decimal(str(c["taker_buy_volume"])),
                taker_buy_quote_volume=Decimal(str(c["taker_buy_quote_volume"])),
                source=c["source"],
                event_time=dt(c["event_time"]),
            )
            for c in candles
        ]
    )


def test_the_symbols_table_follows_listings_delistings_and_a_return_to_trading():
    from collector.models import Symbol
    from collector.services import record_universe

    def info(status: str = "TRADING", onboard: int = 1_600_000_000_000) -> dict:
        return {
            "status": status,
            "contractType": "PERPETUAL",
            "baseAsset": "X",
            "quoteAsset": "USDT",
            "onboardDate": onboard,
        }

    minute = 60_000
    t1, t2, t3 = 1_700_000_000_000, 1_700_000_000_000 + 10 * minute, 1_700_000_000_000 + 20 * minute
    first = record_universe({"AAAUSDT": info(), "BBBUSDT": info()}, t1)
    assert first == {"AAAUSDT": 1_600_000_000_000, "BBBUSDT": 1_600_000_000_000}  # history from listing

    record_universe({"AAAUSDT": info()}, t2)  # BBB delisted
    rows = {row.symbol: row for row in Symbol.objects.all()}
    assert rows["BBBUSDT"].trading is False and rows["BBBUSDT"].status == "NOT_LISTED"
    assert rows["AAAUSDT"].last_seen == datetime.fromtimestamp(t2 / 1000, UTC)
    assert rows["AAAUSDT"].first_seen == datetime.fromtimestamp(t1 / 1000, UTC)

    back = record_universe({"AAAUSDT": info(), "BBBUSDT": info()}, t3, starts={"BBBUSDT": t3 - minute})
    assert back["BBBUSDT"] == t3 - minute  # a new history from when it came back, not its listing
    assert back["AAAUSDT"] == 1_600_000_000_000
    returned = Symbol.objects.get(symbol="BBBUSDT")
    assert returned.trading is True and returned.status == "TRADING"
    assert returned.last_seen == datetime.fromtimestamp(t3 / 1000, UTC)
