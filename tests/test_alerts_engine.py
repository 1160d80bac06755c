"""The live alert engine over real NATS JetStream and PostgreSQL (docs/contract.md §5, §8): one alert per bar,
cooldowns that survive restarts and resharding, rule edits without restart, history + outbox in one
transaction, publish after commit, late alerts, bad payloads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from asgiref.sync import sync_to_async

from alerts import services
from alerts.engine import AlertWorker
from alerts.models import AlertHistory, AlertRule, OutboxEntry
from cryptomon import messaging
from cryptomon.contract import subjects

from .conftest import ROOT, run_manage

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)

MINUTE = 60_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC


def bar(symbol: str, minute: int, change_5m: float | None, *, late: bool = False, final: bool = True) -> dict:
    return {
        "v": 1,
        "symbol": symbol,
        "open_time": T0 + minute * MINUTE,
        "final": final,
        "late": late,
        "price": 100.0 + minute,
        "metrics": {"change_5m": change_5m, "volume_5m": 250_000.0, "volume_1d": 9_000_000.0},
    }


async def publish_bar(js, payload: dict, msg_id: str | None = None) -> None:
    symbol = payload["symbol"]
    headers = {"Nats-Msg-Id": msg_id or f"{symbol}:{payload['open_time']}"}
    await js.publish(subjects.metrics_subject(symbol), messaging.encode(payload), headers=headers)


async def until(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(shard: str = "0/1"):
    worker = AlertWorker(messaging.Shard.parse(shard))
    task = asyncio.create_task(worker.run())
    done, _ = await asyncio.wait(
        {task, asyncio.create_task(worker.started.wait())}, timeout=30, return_when="FIRST_COMPLETED"
    )
    if task in done:
        task.result()  # raises the startup error
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


def make_rule(slug: str = "pump", expression: str = "change_5m > 1", **fields) -> AlertRule:
    return AlertRule.objects.create(
        slug=slug, name=fields.pop("name", slug.title()), expression=expression, **fields
    )


@sync_to_async
def history(**filters) -> list[AlertHistory]:
    return list(AlertHistory.objects.filter(**filters).order_by("time", "rule", "symbol"))


@sync_to_async
def outbox_count() -> int:
    return OutboxEntry.objects.count()


class Collected:
    """Every alerts.triggered message, read back from the ALERTS stream."""

    def __init__(self, nc):
        self.nc = nc
        self.payloads: list[dict] = []

    async def start(self):
        self.sub = await self.nc.subscribe("alerts.triggered.>", cb=self._on)
        return self

    async def _on(self, message):
        self.payloads.append(messaging.decode(message.data))


@pytest.fixture
def rules(db):
    AlertRule.objects.all().delete()  # the presets migration's rows; each test states its own rules


@pytest.fixture
def fast_reload(settings):
    settings.ALERTS_RULE_RELOAD_SECONDS = 0.2


async def test_it_stores_publishes_and_queues_one_alert_per_rule_symbol_and_bar(jetstream, rules):
    nc, js = jetstream
    await sync_to_async(make_rule)("pump", "change_5m > 1", cooldown_seconds=0)
    await sync_to_async(make_rule)("quiet", "change_5m < -50")
    seen = await Collected(nc).start()
    async with running() as worker:
        await publish_bar(js, bar("BTCUSDT", 0, 2.0))
        await publish_bar(js, bar("BTCUSDT", 0, 2.0), msg_id="again-1")  # the same bar delivered twice
        await publish_bar(js, bar("BTCUSDT", 1, 0.5))  # false
        await publish_bar(js, bar("BTCUSDT", 2, 3.0))
        await until(lambda: worker.stats.get("alerts_bars_total") >= 4, what="4 bars")
        await until(lambda: len(seen.payloads) >= 2, what="2 published alerts")
    fired = {labels for name, labels in worker.stats.values if name == "alerts_fired_total"}
    assert fired == {(("rule", "pump"),)}  # /metrics counts alerts by their global rule's slug
    rows = await history()
    assert [(r.rule, r.symbol, r.open_time) for r in rows] == [
        ("pump", "BTCUSDT", T0),
        ("pump", "BTCUSDT", T0 + 2 * MINUTE),
    ]
    assert await outbox_count() == 2
    first = rows[0].to_payload()
    assert seen.payloads[0] == first
    assert first["id"] == f"pump:BTCUSDT:{T0}"
    assert first["metrics"] == {"change_5m": 2.0, "volume_1d": 9_000_000.0}
    assert first["price"] == 100.0 and first["late"] is False and first["owner"] is None
    stored = await js.get_last_msg("ALERTS", "alerts.triggered.BTCUSDT")
    assert stored.headers["Nats-Msg-Id"] == f"pump:BTCUSDT:{T0 + 2 * MINUTE}"


async def test_a_true_bar_inside_the_cooldown_does_not_fire_or_restart_it(jetstream, rules):
    _nc, js = jetstream
    await sync_to_async(make_rule)("pump", "change_5m > 1", cooldown_seconds=300)
    async with running() as worker:
        for minute in range(0, 11):
            await publish_bar(js, bar("ETHUSDT", minute, 2.0))
        await until(lambda: worker.stats.get("alerts_bars_total") >= 11, what="11 bars")
    assert [r.open_time for r in await history()] == [T0, T0 + 5 * MINUTE, T0 + 10 * MINUTE]


async def test_the_cooldown_holds_across_a_restart(jetstream, rules):
    _nc, js = jetstream
    await sync_to_async(make_rule)("pump", "change_5m > 1", cooldown_seconds=300)
    async with running() as worker:
        await publish_bar(js, bar("SOLUSDT", 0, 2.0))
        await until(lambda: worker.stats.get("alerts_bars_total") >= 1)
    async with running() as worker:  # a new process: its state comes from alert_history
        await publish_bar(js, bar("SOLUSDT", 3, 2.0))
        await publish_bar(js, bar("SOLUSDT", 5, 2.0))
        await until(lambda: worker.stats.get("alerts_bars_total") >= 2, what="2 bars after the restart")
    assert [r.open_time for r in await history()] == [T0, T0 + 5 * MINUTE]


@sync_to_async
def universe(symbols: list[str]) -> None:
    from collector.models import Symbol

    now = datetime.now(UTC)
    for symbol in symbols:
        Symbol.objects.create(
            symbol=symbol,
            status="TRADING",
            contract_type="PERPETUAL",
            first_seen=now,
            last_seen=now,
            history_start=now,
        )


async def test_the_cooldown_holds_across_two_shards_and_each_symbol_has_one_owner(jetstream, rules):
    _nc, js = jetstream
    await sync_to_async(make_rule)("pump", "change_5m > 1", cooldown_seconds=300)
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "币安人生USDT"]
    await universe(symbols)
    owned = sum(messaging.Shard(0, 2).owns(s) for s in symbols)
    assert 0 < owned < len(symbols)  # both shards get work
    async with running("0/1") as worker:
        for symbol in symbols:
            await publish_bar(js, bar(symbol, 0, 2.0))
        await until(lambda: worker.stats.get("alerts_bars_total") >= len(symbols))
    async with running("0/2") as first, running("1/2") as second:
        assert (first.durable, second.durable) == ("alerts-p0of2", "alerts-p1of2")
        for minute in (2, 5):
            for symbol in symbols:
                await publish_bar(js, bar(symbol, minute, 2.0))
        # New consumers start at the stream's beginning: minute 0 is seen again and changes nothing.
        total = 3 * len(symbols)
        await until(
            lambda: first.stats.get("alerts_bars_total") + second.stats.get("alerts_bars_total") >= total
        )
        await asyncio.sleep(0.3)
    assert (first.stats.get("alerts_bars_total"), second.stats.get("alerts_bars_total")) == (
        3 * owned,
        3 * (len(symbols) - owned),
    )
    assert (
        first.stats.get("alerts_skipped_not_owned_total")
        == second.stats.get("alerts_skipped_not_owned_total")
        == 0
    )
    rows = await history()
    for symbol in symbols:
        assert [r.open_time for r in rows if r.symbol == symbol] == [T0, T0 + 5 * MINUTE], symbol


async def test_a_rule_edit_reaches_the_running_engine_without_a_restart(jetstream, rules, fast_reload):
    _nc, js = jetstream
    rule = await sync_to_async(make_rule)("pump", "change_5m > 5", cooldown_seconds=0)
    async with running() as worker:
        await publish_bar(js, bar("BTCUSDT", 0, 2.0))
        await until(lambda: worker.stats.get("alerts_bars_total") >= 1)
        await sync_to_async(services.update_rule)(rule, expression="change_5m > 1")
        await until(
            lambda: worker.engine.rules.final and worker.engine.rules.final[0].expression == "change_5m > 1",
            what="the edited rule",
        )
        await publish_bar(js, bar("BTCUSDT", 1, 2.0))
        await until(lambda: worker.stats.get("alerts_bars_total") >= 2)
        await sync_to_async(services.set_enabled)([rule], False)
        await until(lambda: not worker.engine.rules.final, what="the disabled rule to go")
        await publish_bar(js, bar("BTCUSDT", 2, 2.0))
        await until(lambda: worker.stats.get("alerts_bars_total") >= 3)
    assert [r.open_time for r in await history()] == [T0 + MINUTE]


async def test_each_alert_is_in_history_with_its_outbox_row_before_it_is_published(jetstream, rules):
    nc, js = jetstream
    await sync_to_async(make_rule)("pump", "change_5m > 1", cooldown_seconds=0)
    checked: list[tuple[int, int]] = []

    @sync_to_async
    def stored(alert_id: str) -> tuple[int, int]:
        rule, symbol, open_time = alert_id.split(":")
        moment = datetime.fromtimestamp(int(open_time) / 1000, UTC)
        row = AlertHistory.objects.get(rule=rule, symbol=symbol, time=moment)
        return row.id, OutboxEntry.objects.filter(alert_id=row.id).count()

    async def on_alert(message):
        checked.append(await stored(messaging.decode(message.data)["id"]))

    await nc.subscribe("alerts.triggered.>", cb=on_alert)
    async with running():
        for minute in range(3):
            await publish_bar(js, bar("BTCUSDT", minute, 2.0))
        await until(lambda: len(checked) >= 3, what="3 alerts")
    assert len({row_id for row_id, _ in checked}) == 3
    assert all(outbox == 1 for _, outbox in checked)


def test_history_and_outbox_are_one_transaction(rules):
    from django.db import IntegrityError, connections

    from alerts.decisions import RuleSpec

    with connections["timeseries"].cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence('alert_history', 'id'), 1000)")
    OutboxEntry.objects.create(alert_id=1001)  # the next alert's outbox row cannot be written
    rule = RuleSpec.build("pump", "change_5m > 1")
    with pytest.raises(IntegrityError):
        services.record_alerts([rule], "BTCUSDT", T0, 1.0, {"change_5m": 2.0}, late=False)
    assert not AlertHistory.objects.exists()  # the history row went with the failed outbox row
    OutboxEntry.objects.all().delete()
    recorded = services.record_alerts([rule], "BTCUSDT", T0, 1.0, {"change_5m": 2.0}, late=False)
    assert recorded.created == 1 and AlertHistory.objects.count() == 1 and OutboxEntry.objects.count() == 1


def test_a_burst_recorded_at_once_keeps_each_symbols_cooldown_and_republishes_on_redelivery(rules):
    from alerts.decisions import RuleSpec

    rule = RuleSpec.build("pump", "change_5m > 1", cooldown_seconds=300)
    metrics = {"change_5m": 2.0}
    burst = [
        ([rule], "BTCUSDT", T0, 1.0, metrics, False),
        ([rule], "ETHUSDT", T0, 2.0, metrics, False),
        ([rule], "BTCUSDT", T0 + 60_000, 1.1, metrics, False),  # inside BTC's cooldown: refused
    ]
    first = services.record_many(burst)
    assert [r.created for r in first] == [1, 1, 0]
    assert [p["id"] for r in first for p in r.payloads] == [f"pump:BTCUSDT:{T0}", f"pump:ETHUSDT:{T0}"]
    assert first[2].blocked == {"pump": T0}
    assert OutboxEntry.objects.count() == 2

    twice = ([rule], "SOLUSDT", T0, 3.0, metrics, False)
    assert [r.created for r in services.record_many([twice, twice])] == [1, 0]  # one alert, one outbox row
    assert OutboxEntry.objects.count() == 3

    again = services.record_many(burst[:2])  # a redelivery after a crash between commit and publish
    assert [r.created for r in again] == [0, 0]
    assert [p["id"] for r in again for p in r.payloads] == [f"pump:BTCUSDT:{T0}", f"pump:ETHUSDT:{T0}"]
    assert AlertHistory.objects.count() == 3 and OutboxEntry.objects.count() == 3


async def test_a_failed_write_is_retried_and_the_bar_is_not_lost(jetstream, rules, caplog):
    from django.db import connections

    _nc, js = jetstream
    await sync_to_async(make_rule)("pump", "change_5m > 1", cooldown_seconds=0)

    @sync_to_async
    def block_next_outbox_row() -> None:
        with connections["timeseries"].cursor() as cursor:
            cursor.execute("SELECT setval(pg_get_serial_sequence('alert_history', 'id'), 5000)")
        OutboxEntry.objects.create(alert_id=5001)

    await block_next_outbox_row()
    with caplog.at_level(logging.WARNING, logger="alerts.engine"):
        async with running() as worker:
            await publish_bar(js, bar("BTCUSDT", 0, 2.0))
            await until(
                lambda: worker.stats.get("alerts_created_total") >= 1, what="the alert after the retry"
            )
            assert worker.stats.get("alerts_retries_total") >= 1
    rows = await history()
    assert [r.open_time for r in rows] == [T0]
    assert await sync_to_async(OutboxEntry.objects.filter(alert_id=rows[0].id).count)() == 1
    assert "retrying" in caplog.text


async def test_late_alerts_are_stored_and_published_but_not_notified(jetstream, rules):
    nc, js = jetstream
    await sync_to_async(make_rule)("pump", "change_5m > 1", cooldown_seconds=0)
    seen = await Collected(nc).start()
    async with running():
        await publish_bar(js, bar("BTCUSDT", 0, 2.0, late=True))
        await until(lambda: len(seen.payloads) >= 1, what="the late alert")
    rows = await history()
    assert [r.late for r in rows] == [True]
    assert seen.payloads[0]["late"] is True
    assert await outbox_count() == 0


def test_late_alerts_are_notified_when_the_setting_says_so(rules, settings):
    from alerts.decisions import RuleSpec

    settings.ALERTS_NOTIFY_LATE = True
    rule = RuleSpec.build("pump", "change_5m > 1")
    services.record_alerts([rule], "BTCUSDT", T0, 1.0, {"change_5m": 2.0}, late=True)
    assert OutboxEntry.objects.count() == 1


async def test_a_bad_payload_is_logged_and_terminated_and_the_worker_goes_on(jetstream, rules, caplog):
    _nc, js = jetstream
    await sync_to_async(make_rule)("pump", "change_5m > 1", cooldown_seconds=0)
    with caplog.at_level(logging.ERROR, logger="alerts.engine"):
        async with running() as worker:
            await js.publish("metrics.calculated.BTCUSDT", b"{not json", headers={"Nats-Msg-Id": "x1"})
            await js.publish(
                "metrics.calculated.BTCUSDT",
                messaging.encode({**bar("BTCUSDT", 0, 2.0), "open_time": "yesterday"}),
                headers={"Nats-Msg-Id": "x2"},
            )
            await publish_bar(js, bar("BTCUSDT", 1, 2.0))
            await until(lambda: worker.stats.get("alerts_bars_total") >= 1, what="the good bar")
            await until(lambda: worker.stats.get("alerts_bad_payloads_total") >= 2)

            async def settled() -> bool:  # the good bar is counted before it is stored and acknowledged
                return (await js.consumer_info("METRICS", worker.durable)).num_ack_pending == 0

            await until(settled, what="every message acknowledged or terminated")
            info = await js.consumer_info("METRICS", worker.durable)
    assert worker.stats.get("alerts_bad_payloads_total") == 2
    assert [r.open_time for r in await history()] == [T0 + MINUTE]
    assert "bad payload on metrics.calculated.BTCUSDT" in caplog.text
    assert "malformed JSON" in caplog.text and "open_time 'yesterday'" in caplog.text
    assert info.num_redelivered == 0 and info.num_ack_pending == 0


async def test_intrabar_rules_fire_on_the_first_true_live_update_once_per_bar(jetstream, rules):
    nc, js = jetstream
    await sync_to_async(make_rule)("fast", "change_5m > 1", mode="intrabar", cooldown_seconds=0)
    await sync_to_async(make_rule)("slow", "change_5m > 1", cooldown_seconds=0)
    async with running() as worker:
        for change in (0.5, 2.0, 3.0):  # the open minute 0, updated
            await nc.publish("metrics.live.BTCUSDT", messaging.encode(bar("BTCUSDT", 0, change, final=False)))
        await until(lambda: worker.stats.get("alerts_live_updates_total") >= 3, what="live updates")
        await until(lambda: worker.stats.get("alerts_created_total") >= 1)
        assert [(r.rule, r.metrics["change_5m"]) for r in await history()] == [("fast", 2.0)]
        await publish_bar(js, bar("BTCUSDT", 0, 2.5))  # the final bar: `slow` fires, `fast` already did
        await until(lambda: worker.stats.get("alerts_bars_total") >= 1)
    assert sorted((r.rule, r.open_time) for r in await history()) == [("fast", T0), ("slow", T0)]


async def test_personal_rules_carry_their_owner(jetstream, rules, django_user_model):
    nc, js = jetstream
    user = await sync_to_async(django_user_model.objects.create_user)("ann", password="pw-123456789")
    await sync_to_async(services.create_personal_rule)(user, name="My pump", expression="change_5m > 1")
    seen = await Collected(nc).start()
    async with running():
        await publish_bar(js, bar("BTCUSDT", 0, 2.0))
        await until(lambda: len(seen.payloads) >= 1)
    assert seen.payloads[0]["owner"] == user.pk and seen.payloads[0]["rule"] == f"u{user.pk}-my_pump"


def database_env() -> dict[str, str]:
    """DATABASE_URL/TIMESERIES_DATABASE_URL naming the test databases, for a subprocess."""
    from django.conf import settings

    env = {}
    for variable, alias in (("DATABASE_URL", "default"), ("TIMESERIES_DATABASE_URL", "timeseries")):
        url = os.environ[variable]
        name = url.split("/")[3].split("?")[0]
        env[variable] = url.replace(f"/{name}", f"/{settings.DATABASES[alias]['NAME']}", 1)
    return env


def test_run_alerts_runs_as_a_command_and_stops_on_sigterm(rules, jetstream_sync):
    make_rule("pump", "change_5m > 1", cooldown_seconds=0)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "run_alerts", "--shard", "0/1"],
        cwd=ROOT,
        env={**os.environ, **database_env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "run_alerts: started as alerts-p0of1" in process.stdout.readline()
        jetstream_sync(bar("BTCUSDT", 0, 2.0))
        deadline = time.monotonic() + 30
        while not AlertHistory.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert AlertHistory.objects.count() == 1
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "run_alerts: stopped" in out


def test_run_alerts_refuses_a_bad_shard():
    result = run_manage("run_alerts", "--shard", "2/2")
    assert result.returncode == 2
    assert "k must be in 0..N-1" in result.stderr


@pytest.fixture
def jetstream_sync():
    """Publish a metrics bar from synchronous code (for the subprocess test)."""

    def publish(payload: dict) -> None:
        async def go():
            nc, js = await messaging.connect_jetstream("test-sync")
            await publish_bar(js, payload)
            await nc.close()

        asyncio.run(go())

    async def reset():
        nc = await messaging.connect("test-reset")
        js = nc.jetstream()
        for name in subjects.STREAMS:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await messaging.ensure_streams(js)
        await nc.close()

    asyncio.run(reset())
    return publish


def random_rows(seed: int, minutes: int) -> list[list[str]]:
    import random

    rng = random.Random(seed)
    price, rows = 50.0, []
    for minute in range(minutes):
        open_time = T0 + minute * MINUTE
        close = round(price * (1 + rng.gauss(0, 0.006)), 4)
        high, low = round(max(price, close) * 1.001, 4), round(min(price, close) * 0.999, 4)
        quote = round(rng.lognormvariate(11, 1.0), 2)
        rows.append(
            [str(open_time), f"{price:.4f}", f"{high:.4f}", f"{low:.4f}", f"{close:.4f}", "10",
             str(open_time + MINUTE - 1), f"{quote:.2f}", "40", "5", f"{quote / 2:.2f}", "0"]
        )  # fmt: skip
        price = close
    return rows


@pytest.mark.parametrize("vector_from", [2, 10_000], ids=["numpy-waves", "closures"])
async def test_the_live_pipeline_stores_exactly_what_the_backtest_of_the_same_candles_finds(
    jetstream, rules, tmp_path, monkeypatch, vector_from
):
    """docs/contract.md §7: alert_history equals the backtest of candles_1m as stored, whether the engine decides a
    batch's bars with numpy across symbols or bar by bar."""
    import alerts.engine

    monkeypatch.setattr(alerts.engine, "VECTOR_FROM", vector_from)
    from django.core.management import call_command
    from django.db import connections

    from alerts.presets import PRESETS
    from cryptomon.contract.candles import Candle
    from metrics.replay import replay

    from .test_backtest import store_candles

    _nc, js = jetstream

    @sync_to_async
    def setup(symbols):
        for preset in PRESETS:
            make_rule(
                preset.slug, preset.expression, name=preset.name, cooldown_seconds=preset.cooldown_seconds
            )
        make_rule("jump", "change_5m > 0.8 or change_15m < -1.5", cooldown_seconds=0)
        make_rule("rsi_hot", "rsi_14 > 70 and macd_hist > 0", cooldown_seconds=600)
        make_rule("swing", "abs(change_15m) > 1.2", mode="intrabar", cooldown_seconds=120)
        for symbol, rows in symbols.items():
            store_candles(symbol, rows)

    symbols = {
        name: random_rows(seed, 240) for seed, name in enumerate(["AAAUSDT", "BBBUSDT", "币安人生USDT"])
    }
    await setup(symbols)
    candles = [
        Candle.from_csv_row(s, row)
        for minute in range(240)
        for s, rows in symbols.items()
        for row in [rows[minute]]
    ]
    bars = list(replay(candles))
    async with running() as worker:
        for item in bars:
            await publish_bar(js, item.payload())
        await until(lambda: worker.stats.get("alerts_bars_total") >= len(bars), timeout=60, what="every bar")
        assert (worker.stats.get("alerts_numpy_waves_total") > 0) == (vector_from == 2)
    live = {(r.rule, r.symbol, r.open_time): (r.price, r.metrics) for r in await history()}
    monkeypatch.setenv("BACKTEST_PROCESSES", "1")
    output = tmp_path / "backtest.jsonl"
    await sync_to_async(call_command)("backtest", "--rules", "all", "--output", str(output))
    await sync_to_async(connections.close_all)()
    import json

    offline = {
        (a["rule"], a["symbol"], a["open_time"]): (a["price"], a["metrics"])
        for a in map(json.loads, output.read_text().splitlines())
    }
    assert len(live) > 20 and len({rule for rule, _, _ in live}) >= 3
    assert live == offline


async def test_a_shard_follows_the_universe_and_a_crash_before_publishing_is_repaired(
    jetstream, rules, settings
):
    from django.db import connections

    settings.ALERTS_UNIVERSE_REFRESH_SECONDS = 0.2
    nc, js = jetstream
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT", "DOGEUSDT"]
    await universe(symbols[:3])

    @sync_to_async
    def stored_but_never_published() -> AlertHistory:
        row = AlertHistory.objects.create(
            rule="pump", rule_name="Pump", severity="info", direction="bull", symbol="SOLUSDT",
            time=datetime.fromtimestamp(T0 / 1000, UTC), triggered_at=datetime.now(UTC), price=1.0,
            metrics={"change_5m": 2.0, "volume_1d": None},
        )  # fmt: skip
        connections.close_all()
        return row

    row = await stored_but_never_published()
    seen = await Collected(nc).start()
    shard = messaging.Shard(0, 2)
    assert shard.owns("SOLUSDT") and not shard.owns("BTCUSDT")
    async with running("0/2") as worker:
        info = await js.consumer_info("METRICS", worker.durable)
        assert info.config.filter_subjects == shard.filter_subjects("metrics.calculated", symbols[:3])
        await universe(symbols[3:])
        wanted = shard.filter_subjects("metrics.calculated", symbols)

        async def updated():
            config = (await js.consumer_info("METRICS", worker.durable)).config
            return (config.filter_subjects or [config.filter_subject]) == wanted

        await until(updated, what="the consumer to follow the universe")
        await until(lambda: seen.payloads, what="the republished alert")
        assert [p["id"] for p in seen.payloads] == [row.alert_id]
