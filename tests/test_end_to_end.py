"""The product end to end (docs/operations.md): emulator → collector → metrics → alerts → gateway → a browser's socket.

Each test runs every worker as its own process on servers of its own (tests/e2e_system.py), then checks the
two equalities the design promises: `candles_1m` equals the venue's klines, and `alert_history` equals the
backtest of `candles_1m` as stored.
"""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.e2e_system import FeedClient, System

pytestmark = pytest.mark.timeout(900)

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "collector" / "emulator" / "scenarios"
# Preset scenarios (each named after the preset it makes fire), on the symbols they script, plus a
# non-ASCII symbol that only random-walks.
PRESETS = ["futures_pioneer_bull", "futures_15_big_bear", "futures_bottom_hunter"]
SYMBOLS = [json.loads((SCENARIO_DIR / f"{slug}.json").read_text())["symbol"] for slug in PRESETS] + [
    "币安人生USDT"
]
SPEED = 60.0  # a market minute per second
EXTRA_RULES = [  # rules that fire often on a random walk, so the equalities compare many alerts
    ("e2e-up-5m", "change_5m > 0.15", 300),
    ("e2e-down-15m", "change_15m < -0.2 and volume_15m > 0", 0),
    ("e2e-rsi-low", "rsi_14 < 35 or bb_lower > price", 600),
]
PRICE_FIELDS = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "taker_buy_volume",
    "taker_buy_quote_volume",
)


@pytest.fixture
def system(tmp_path):
    system = System(tmp_path / "e2e", symbols=SYMBOLS, speed=SPEED, scenarios=scenario_files())
    try:
        system.start_servers()
        add_rules(system)
        system.start_all()
        yield system
    finally:
        system.stop()


def scenario_files() -> list[Path]:
    return [SCENARIO_DIR / f"{slug}.json" for slug in PRESETS]


def add_rules(system: System) -> None:
    code = "from alerts.models import AlertRule\n" + "".join(
        f"AlertRule.objects.create(slug={slug!r}, name={slug!r}, expression={expression!r}, "
        f"cooldown_seconds={cooldown}, severity='info', direction='neutral')\n"
        for slug, expression, cooldown in EXTRA_RULES
    )
    system.manage("shell", "-c", code)


def connect_client(system: System) -> FeedClient:
    client = FeedClient(system.ws_url, origin=f"http://127.0.0.1:{system.web_port}")
    client.start()
    system.wait_until(lambda: client.of_type("snapshot"), "the first snapshot", 60)
    return client


def let_market_run(system: System, minutes: int) -> None:
    target = system.venue_time() + minutes * 60_000
    system.wait_until(
        lambda: system.venue_time() >= target, f"{minutes} market minutes", minutes * 60 / SPEED + 60
    )


def stop_collecting_and_drain(system: System) -> None:
    """Freeze the stored state: no new candles, and every consumer has acknowledged everything."""
    system.terminate("collector")
    system.wait_drained()


def assert_candles_equal_venue(system: System) -> None:
    for symbol in SYMBOLS:
        stored = system.sql(
            "SELECT (extract(epoch FROM time) * 1000)::bigint, open, high, low, close, volume, quote_volume,"
            " taker_buy_volume, taker_buy_quote_volume, trades, source FROM candles_1m WHERE symbol = %s"
            " ORDER BY time",
            (symbol,),
        )
        assert stored, f"no candles stored for {symbol}"
        venue = {row[0]: row for row in system.venue_klines(symbol, stored[0][0], stored[-1][0])}
        for open_time, *values, trades, source in stored:
            if source == "filled":  # a minute the venue confirmed has no kline: flat, no volume
                assert open_time not in venue, f"{symbol} {open_time} filled although the venue has a kline"
                continue
            row = venue.get(open_time)
            assert row is not None, f"{symbol} {open_time} stored but unknown to the venue"
            expected = [row[1], row[2], row[3], row[4], row[5], row[7], row[9], row[10]]
            assert [Decimal(v) for v in values] == [Decimal(v) for v in expected], f"{symbol} {open_time}"
            assert trades == row[8]
        stored_times = {row[0] for row in stored}
        missing = sorted(t for t in venue if t not in stored_times)
        assert not missing, f"{symbol}: venue minutes never stored: {missing[:5]}"


def backtest_of_stored_candles(system: System) -> list[dict]:
    result = system.manage("backtest", "--rules", "all", "--output", "-")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def assert_history_equals_backtest(system: System) -> int:
    stored = system.sql(
        "SELECT rule, symbol, (extract(epoch FROM time) * 1000)::bigint, price, metrics FROM alert_history"
    )
    live = {(rule, symbol, t): (price, metrics) for rule, symbol, t, price, metrics in stored}
    replayed = {
        (a["rule"], a["symbol"], a["open_time"]): (a["price"], a["metrics"])
        for a in backtest_of_stored_candles(system)
    }
    only_live = sorted(set(live) - set(replayed))
    only_backtest = sorted(set(replayed) - set(live))
    assert not only_live and not only_backtest, (
        f"alert_history differs from the backtest: only live {only_live[:5]}, only backtest {only_backtest[:5]}"
    )
    for key, (price, metrics) in live.items():
        assert (price, metrics) == replayed[key], f"{key}: live and backtest disagree on the values"
    return len(live)


def test_a_scenario_reaches_the_browser_and_history_equals_the_backtest(system):
    client = connect_client(system)
    try:
        let_market_run(system, 40)
        system.wait_until(
            lambda: any(not a.get("late") for a in client.alerts()), "a live alert on the socket", 120
        )
        assert client.of_type("status"), "the feed status never reached the client"
        stop_collecting_and_drain(system)
        assert_candles_equal_venue(system)
        alerts = assert_history_equals_backtest(system)
        assert alerts > 0
        fired = {row[0] for row in system.sql("SELECT DISTINCT rule FROM alert_history")}
        for slug in PRESETS:
            assert slug in fired, f"the {slug} scenario did not make {slug} fire"
        received = {(a["rule"], a["symbol"], a["open_time"]) for a in client.alerts()}
        newest = system.sql(
            "SELECT rule, symbol, (extract(epoch FROM time) * 1000)::bigint FROM alert_history"
            " WHERE NOT late ORDER BY time DESC LIMIT 5"
        )
        assert {tuple(row) for row in newest} <= received, "live alerts missing from the browser's feed"
    finally:
        client.close()


def test_the_pipeline_survives_every_fault_and_loses_nothing(system):
    client = connect_client(system)
    try:
        let_market_run(system, 10)
        client.wait_for_new("market", "market frames on the socket", system)
        for worker in ("collector", "metrics", "alerts", "gateway"):
            system.kill(worker)
            let_market_run(system, 2)
            system.start(worker)
            let_market_run(system, 3)
            client.wait_for_new("market", f"market frames again after kill -9 of {worker}", system)
        for server in ("nats", "postgres", "valkey"):
            system.restart_server(server)
            if server in ("nats", "valkey"):  # the bridge's own connections: clients must resync
                client.wait_for_new("snapshot", f"a fresh snapshot after the {server} restart", system)
            let_market_run(system, 5)
            client.wait_for_new("market", f"market frames again after the {server} restart", system)
        for fault in ("drop", "stall"):
            control(system, fault)
            let_market_run(system, 5)
        let_market_run(system, 10)
        client.wait_for_new("market", "market frames after the venue faults", system)
        stop_collecting_and_drain(system)
        assert_candles_equal_venue(system)
        alerts = assert_history_equals_backtest(system)
        assert alerts > 0
        print(f"survived every fault: {alerts} alerts; forced gaps: {forced_gaps(system)}")
    finally:
        client.close()


LONG_OUTAGE_SECONDS = 15.0  # past the 10 s in which bars sent before an outage must be acknowledged


def test_the_live_market_resumes_after_every_nats_restart_short_or_long(system):
    """The dashboard's market table keeps updating across NATS outages of any length: every live path
    (candles.live, metrics.live, the bridge's subscriptions) resumes, and no worker exits."""
    client = connect_client(system)
    try:
        let_market_run(system, 3)
        client.wait_for_new("market", "market frames before any outage", system)
        for number, long in enumerate((False, True, False, False, True), start=1):
            nats_outage(system, client, f"outage {number} ({'long' if long else 'short'})", long)
        # Outages close together are one in the log (no frame went out between them).
        assert system.log_count("collector", "live frames flow again") >= 1, (
            "the collector never logged its drops"
        )
        system.assert_running()
    finally:
        client.close()


def nats_outage(system: System, client: FeedClient, what: str, long: bool) -> None:
    """NATS down and up again; a long outage lasts at least LONG_OUTAGE_SECONDS and until the collector has
    noticed it. Then the market rows on the socket move on."""
    before = client.newest_market_time()
    disconnects = system.log_count("collector", "NATS (collector): disconnected")
    system.stop_server("nats")
    if long:
        over = time.monotonic() + LONG_OUTAGE_SECONDS
        system.wait_until(
            lambda: (
                time.monotonic() >= over
                and system.log_count("collector", "NATS (collector): disconnected") > disconnects
            ),
            f"{what}: the collector noticing the outage",
            LONG_OUTAGE_SECONDS + 60,
        )
    system.start_server("nats")
    client.wait_for_new("snapshot", f"{what}: a fresh snapshot once NATS is back", system)
    system.wait_until(
        lambda: client.newest_market_time() > before, f"{what}: market rows newer than before it", 60
    )


def control(system: System, fault: str) -> None:
    import urllib.request

    request = urllib.request.Request(f"{system.rest_url}/_emulator/faults/{fault}", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def forced_gaps(system: System) -> int:
    """The metrics worker's `gaps_forced_total` as it last logged it (missing minutes given up on)."""
    found = re.findall(
        r"gaps_forced_total=(\d+)", system.processes["metrics"].log.read_text(errors="replace")
    )
    return int(found[-1]) if found else 0
