"""The `run_metrics` worker on a real NATS JetStream and a real PostgreSQL.

What a user would notice: every final candle becomes exactly one bar on `metrics.calculated.<SYM>` and six
rows in `metrics_calculated`, with the same numbers as the offline replay (so alerts equal backtests), across
restarts, shards, missing minutes and bad messages; `metrics.live` never floods.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import random
from datetime import UTC, datetime

import msgspec
import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.db import connections

from cryptomon import messaging
from cryptomon.contract import subjects
from cryptomon.contract.candles import Candle, decode_payload
from metrics import selectors
from metrics.engine import MetricsWorker, WorkerConfig
from metrics.replay import replay

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "timeseries"])]

MINUTE = 60_000
T0 = 1_767_225_600_000


async def in_thread(function, *args):
    def call():
        try:
            return function(*args)
        finally:
            connections.close_all()

    return await sync_to_async(call, thread_sensitive=False)()


def make_candle(symbol: str, minute: int, *, late: bool = False) -> Candle:
    seed = sum(map(ord, symbol)) + minute
    close = 100 + 10 * math.sin(seed / 7) + (seed % 13) / 10
    open_ = 100 + 10 * math.sin((seed - 1) / 7)
    close_time = T0 + minute * MINUTE + MINUTE - 1
    return Candle.from_payload(
        {
            "symbol": symbol,
            "open_time": T0 + minute * MINUTE,
            "close_time": close_time,
            "open": f"{open_:.4f}",
            "high": f"{max(open_, close) + 0.5:.4f}",
            "low": f"{min(open_, close) - 0.25:.4f}",
            "close": f"{close:.4f}",
            "volume": "12.5",
            "quote_volume": f"{1000 + (seed * 7919) % 5000}.12345678",
            "trades": seed % 50,
            "taker_buy_volume": "6.25",
            "taker_buy_quote_volume": f"{400 + (seed * 104729) % 600}.00000001",
            "event_time": close_time + (400_000 if late else 2_000),
            "source": "ws",
        }
    )


async def publish(js, candles) -> None:
    for candle in candles:
        await js.publish(
            subjects.candle_subject(candle.symbol),
            msgspec.json.encode(candle.payload()),
            headers={"Nats-Msg-Id": f"{candle.symbol}:{candle.open_time}"},
        )


async def bars_in_stream(js) -> list[dict]:
    info = await js.stream_info("METRICS")
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        with contextlib.suppress(Exception):
            out.append(messaging.decode((await js.get_msg("METRICS", seq)).data))
    return out


async def wait_until(predicate, timeout: float = 30.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := await predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)
    return result


def config(**changes) -> WorkerConfig:
    values = {
        "fetch_timeout_seconds": 0.2,
        "restart_delay_seconds": 0.1,
        "universe_refresh_seconds": 0.3,
        "gap_timeout_seconds": 600.0,
        "late_after_seconds": 180.0,
    }
    values.update(changes)
    return WorkerConfig(**values)


@contextlib.asynccontextmanager
async def running(worker_config: WorkerConfig):
    worker = MetricsWorker(worker_config)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.started.wait(), 30)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


def expected(candles: list[Candle]) -> dict[tuple[str, int], dict]:
    """The replay's bars as they look after a JSON round trip."""
    return {
        (bar.symbol, bar.open_time): msgspec.json.decode(msgspec.json.encode(bar.metrics_dict()))
        for bar in replay(sorted(candles, key=lambda c: (c.open_time, c.symbol)))
    }


def assert_bars_equal_replay(bars: list[dict], candles: list[Candle]) -> None:
    want = expected(candles)
    keys = [(bar["symbol"], bar["open_time"]) for bar in bars]
    assert len(keys) == len(set(keys)), "a bar was published twice"
    assert sorted(keys) == sorted(want), "bars missing or extra"
    for bar in bars:
        assert bar["v"] == 1 and bar["final"] is True
        assert bar["metrics"] == want[(bar["symbol"], bar["open_time"])], (bar["symbol"], bar["open_time"])


def count_rows(table: str) -> int:
    with connections["timeseries"].cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return cursor.fetchone()[0]


def metric_row(symbol: str, timeframe: str, open_time: int) -> dict:
    with connections["timeseries"].cursor() as cursor:
        cursor.execute(
            "SELECT volume, trades, price, rsi_14, open, volume_ratio FROM metrics_calculated "
            "WHERE symbol = %s AND timeframe = %s AND time = %s",
            [symbol, timeframe, datetime.fromtimestamp(open_time / 1000, tz=UTC)],
        )
        row = cursor.fetchone()
    return dict(zip(("volume", "trades", "price", "rsi_14", "open", "volume_ratio"), row, strict=True))


async def test_final_candles_become_one_bar_each_published_and_stored_like_the_replay(jetstream):
    _, js = jetstream
    candles = [make_candle(symbol, m) for m in range(40) for symbol in ("BTCUSDT", "ETHUSDT")]
    async with running(config()):
        await publish(js, candles)
        bars = await wait_until(lambda: _at_least(js, 80))
        await wait_until(lambda: in_thread(lambda: count_rows("metrics_calculated") == 80 * 6))
    assert_bars_equal_replay(bars, candles)
    assert await in_thread(count_rows, "candles_1m") == 80
    last = next(b for b in bars if b["symbol"] == "BTCUSDT" and b["open_time"] == T0 + 39 * MINUTE)
    row = await in_thread(metric_row, "BTCUSDT", "15m", T0 + 39 * MINUTE)
    assert row["volume"] == last["metrics"]["volume_15m"] and row["trades"] == last["metrics"]["trades_15m"]
    assert row["price"] == last["price"] and row["rsi_14"] == last["metrics"]["rsi_14"]
    assert row["volume_ratio"] == last["metrics"]["volume_ratio_15m"]
    assert (await in_thread(metric_row, "BTCUSDT", "1h", T0 + 39 * MINUTE))["open"] is None  # unknown, not 0


async def _at_least(js, count: int) -> list[dict] | None:
    bars = await bars_in_stream(js)
    return bars if len(bars) >= count else None


async def test_a_missing_minute_is_waited_for_then_declared_a_gap_and_a_late_candle_changes_no_bar(jetstream):
    _, js = jetstream
    candles = [make_candle("BTCUSDT", m, late=m == 12) for m in range(15) if m != 10]
    async with running(config(gap_timeout_seconds=2.0)) as worker:
        await publish(js, candles)
        await wait_until(lambda: _at_least(js, 10))
        assert worker.gaps_forced == 0
        bars = await wait_until(lambda: _at_least(js, 14))
        assert worker.gaps_forced == 1
        by_minute = {(b["open_time"] - T0) // MINUTE: b for b in bars}
        assert by_minute[11]["metrics"]["open_5m"] is None  # a new run starts after the gap
        assert by_minute[15 - 1]["metrics"]["price"] == candles[-1].close
        assert [m for m, b in sorted(by_minute.items()) if b["late"]] == [12]
        await publish(js, [make_candle("BTCUSDT", 10)])
        await wait_until(lambda: in_thread(lambda: count_rows("candles_1m") == 15))
        await asyncio.sleep(0.5)
        assert len(await bars_in_stream(js)) == 14  # stored, but no bar is emitted again or changed
    assert_bars_equal_replay(bars, candles)


async def test_a_bad_message_is_reported_and_the_rest_of_its_batch_is_kept(jetstream):
    _, js = jetstream
    good = [make_candle("BTCUSDT", m) for m in range(3)]
    async with running(config()) as worker:
        await publish(js, good[:1])
        await js.publish("candles.1m.BTCUSDT", b'{"v":1,"symbol":"BTCUSDT","open_time":"soon"}')
        await js.publish("candles.1m.ETHUSDT", b"not json")
        await publish(js, good[1:])
        bars = await wait_until(lambda: _at_least(js, 3))
        await wait_until(lambda: in_thread(lambda: count_rows("candles_1m") == 3))
        assert worker.stats.get("metrics_bad_messages_total") >= 2
    assert_bars_equal_replay(bars, good)


async def test_killed_at_random_points_it_restarts_with_the_same_bars_none_lost_none_twice(jetstream):
    _, js = jetstream
    rng = random.Random(5)
    symbols = ("BTCUSDT", "ETHUSDT", "ŁOŚUSDT")
    candles = [make_candle(symbol, m) for m in range(60) for symbol in symbols]
    raw: list[tuple[str, int]] = []

    async def count(message):
        payload = messaging.decode(message.data)
        raw.append((payload["symbol"], payload["open_time"]))

    nc, _ = jetstream
    counter = await nc.subscribe("metrics.calculated.>", cb=count)
    position = 0
    while position < len(candles):
        step = rng.randint(10, 50)
        worker = MetricsWorker(config())
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.started.wait(), 30)
        await publish(js, candles[position : position + step])
        position += step
        await asyncio.sleep(rng.uniform(0.0, 0.6))  # kill mid-batch, between commit and publish, or idle
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    async with running(config()):
        bars = await wait_until(lambda: _at_least(js, len(candles)))
        # Bars are published before their batch is committed: the rows follow (and a crash in between
        # is healed on restart, which the kills above exercise).
        await wait_until(lambda: in_thread(lambda: count_rows("metrics_calculated") == len(candles) * 6))
    await counter.unsubscribe()
    assert_bars_equal_replay(bars, candles)
    assert len(raw) == len(set(raw)), "a bar was published twice"


async def test_two_shards_emit_every_symbols_bars_exactly_once(jetstream):
    nc, js = jetstream
    from collector.models import Symbol

    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "币安人生USDT"]
    now = datetime.now(tz=UTC)

    def register(names):
        for name in names:
            Symbol.objects.using("timeseries").create(
                symbol=name,
                status="TRADING",
                contract_type="PERPETUAL",
                first_seen=now,
                last_seen=now,
                history_start=now,
            )

    await in_thread(register, symbols[:-1])
    raw: list[tuple[str, int]] = []

    async def count(message):
        payload = messaging.decode(message.data)
        raw.append((payload["symbol"], payload["open_time"]))

    counter = await nc.subscribe("metrics.calculated.>", cb=count)
    candles = [make_candle(symbol, m) for m in range(12) for symbol in symbols]
    assert len({messaging.Shard(0, 2).owns(s) for s in symbols}) == 2, "both shards must own symbols"
    async with running(config(shard=messaging.Shard(0, 2))), running(config(shard=messaging.Shard(1, 2))):
        await publish(js, candles[: 6 * 6])
        await in_thread(register, symbols[-1:])  # listed while running: its shard picks it up
        await publish(js, candles[6 * 6 :])
        bars = await wait_until(lambda: _at_least(js, len(candles)))
        await asyncio.sleep(0.3)
    await counter.unsubscribe()
    assert_bars_equal_replay(bars, candles)
    assert sorted(raw) == sorted(set(raw)) and len(raw) == len(candles)
    consumers = sorted([c.name async for c in _consumers(js)])
    assert consumers == ["metrics-p0of2", "metrics-p1of2", "metrics-store-p0of2", "metrics-store-p1of2"]


async def _consumers(js):
    for info in await js.consumers_info("CANDLES"):
        yield info


async def test_metrics_live_is_sent_at_most_once_a_second_per_symbol_with_the_newest_candle(jetstream):
    nc, js = jetstream
    finals = [make_candle("BTCUSDT", m) for m in range(30)]
    received: list[tuple[float, dict]] = []

    async def on_live(message):
        received.append((asyncio.get_running_loop().time(), messaging.decode(message.data)))

    subscription = await nc.subscribe("metrics.live.BTCUSDT", cb=on_live)
    async with running(config()) as worker:
        await publish(js, finals)
        await wait_until(lambda: _at_least(js, 30))
        open_minute = make_candle("BTCUSDT", 30)
        updates = []
        for step in range(25):  # 10 updates a second for 2.5 s
            update = dataclasses.replace(open_minute, close=100 + step / 10, high=200.0, low=1.0)
            updates.append(update)
            await nc.publish("candles.live.BTCUSDT", msgspec.json.encode(update.payload(live=True)))
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.3)
        expected_preview = worker.sequencer.states["BTCUSDT"].preview(updates[-1])
    await subscription.unsubscribe()
    times = [t for t, _ in received]
    assert 2 <= len(received) <= 4
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(times))
    newest = received[-1][1]
    assert newest["final"] is False and newest["open_time"] == T0 + 30 * MINUTE
    assert newest["metrics"] == msgspec.json.decode(msgspec.json.encode(expected_preview.metrics_dict()))
    assert newest["metrics"]["rsi_14"] is not None  # the open minute continues the run of finals


def test_run_metrics_refuses_a_malformed_shard():
    with pytest.raises(CommandError, match="--shard 2/2"):
        call_command("run_metrics", "--shard", "2/2")


async def test_on_start_stored_candles_after_the_stored_watermark_are_evaluated_first(jetstream):
    """The METRICS stream is empty (e.g. down for more than its hour): the watermark comes from the table."""
    _, js = jetstream
    from metrics import services

    candles = [make_candle("BTCUSDT", m) for m in range(70)]
    history = list(replay(candles[:40]))
    await in_thread(services.store, candles[:60], history)  # bars up to minute 39 stored, candles to 59
    async with running(config()):
        await publish(js, candles[60:])
        bars = await wait_until(lambda: _at_least(js, 30))
    assert [(b["open_time"] - T0) // MINUTE for b in bars] == list(
        range(40, 70)
    )  # stored ones first, in order
    want = expected(candles)
    assert all(b["metrics"] == want[("BTCUSDT", b["open_time"])] for b in bars)  # windows span the restart
    assert bars[-1]["metrics"]["volume_1h"] is not None


def with_derivatives(candle: Candle, minute: int) -> Candle:
    """The candle with the §7b fields the collector attaches (a liquidation burst at minute 30)."""
    return decode_payload(
        msgspec.json.encode(
            {
                **candle.payload(),
                "mark_close": f"{candle.close + 0.05:.4f}",
                "index_close": f"{candle.close:.4f}",
                "funding_rate": "0.00025",
                "funding_interval_hours": 8,
                "next_funding_time": T0 + 8 * 60 * MINUTE,
                "open_interest": str(50_000 + 37 * minute),
                "liq_long_quote": "2500000.5" if minute == 30 else "0",
                "liq_short_quote": None if minute == 12 else "10.25",
                "liq_count": 1 if minute == 30 else 0,
            }
        )
    )


def derivative_row(symbol: str, timeframe: str, open_time: int) -> dict:
    names = ("oi_change", "liq_long", "liq_short", "mark_price", "index_price", "basis", "funding_rate")
    names += ("funding_apr", "oi")
    with connections["timeseries"].cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(names)} FROM metrics_calculated WHERE symbol = %s AND timeframe = %s AND time = %s",
            [symbol, timeframe, datetime.fromtimestamp(open_time / 1000, tz=UTC)],
        )
        return dict(zip(names, cursor.fetchone(), strict=True))


async def test_candles_with_derivatives_fields_give_the_derivatives_metrics_published_and_stored(jetstream):
    _, js = jetstream
    candles = [with_derivatives(make_candle("BTCUSDT", m), m) for m in range(40)]
    async with running(config()):
        await publish(js, candles)
        bars = await wait_until(lambda: _at_least(js, 40))
        await wait_until(lambda: in_thread(lambda: count_rows("metrics_calculated") == 40 * 6))
    assert_bars_equal_replay(bars, candles)
    by_time = {bar["open_time"]: bar["metrics"] for bar in bars}
    at_34 = by_time[T0 + 34 * MINUTE]
    assert at_34["liq_long_5m"] == 2500000.5  # the burst at minute 30 is in the window 30..34
    assert by_time[T0 + 35 * MINUTE]["liq_long_5m"] == 0.0
    assert at_34["liq_short_15m"] == 15 * 10.25
    assert by_time[T0 + 26 * MINUTE]["liq_short_15m"] is None  # 12..26 holds the null minute
    assert by_time[T0 + 27 * MINUTE]["liq_short_15m"] == 15 * 10.25
    assert at_34["oi_change_15m"] == (37 * 15) / (50_000 + 37 * 19) * 100
    assert at_34["funding_apr"] == 0.025 * 24 / 8 * 365
    row = await in_thread(derivative_row, "BTCUSDT", "5m", T0 + 34 * MINUTE)
    assert row["liq_long"] == at_34["liq_long_5m"] and row["oi_change"] == at_34["oi_change_5m"]
    assert (row["mark_price"], row["basis"], row["oi"]) == (at_34["mark_price"], at_34["basis"], at_34["oi"])
    stored = await in_thread(selectors.candles_page, T0)  # what a restart warms up from
    assert [c.derivatives for c in stored] == [c.derivatives for c in candles]
