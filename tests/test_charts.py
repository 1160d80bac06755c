"""The symbol page's chart data and price formatting: what a trader reads off the chart and the tables."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from alerts.models import UserSettings
from collector.models import Symbol
from collector.services import record_universe
from cryptomon.contract.times import to_ms as ms
from gateway.prices import decimals_of, format_price
from tests import dashboard_data as data

NOW = data.NOW
db = pytest.mark.django_db(databases=["default", "timeseries"])


@pytest.mark.parametrize(
    ("price", "tick_size", "shown"),
    [
        (0.00000123, "0.00000001", "0.00000123"),
        (0.0011, "0.0000001", "0.0011000"),
        (0.0011, "0.0000100", "0.00110"),
        (1.5, "0.0010", "1.500"),
        (123456.7, "0.10", "123456.7"),
        (64000, "1", "64000"),
    ],
)
def test_a_price_has_the_decimals_of_its_tick_size(price, tick_size, shown):
    assert format_price(price, decimals_of(tick_size)) == shown


@pytest.mark.parametrize(
    ("price", "shown"),
    [(0.00000123, "0.00000123"), (0.0011, "0.0011"), (1.5, "1.50"), (123456.7, "123456.70"), (0, "0.00")],
)
def test_without_a_tick_size_a_small_price_still_shows_its_digits(price, shown):
    assert format_price(price, None) == shown


def test_an_unknown_price_is_a_dash_never_zero():
    assert format_price(None, 2) == "–"
    assert format_price(float("nan"), None) == "–"


def test_a_bad_tick_size_falls_back_to_the_price_precision():
    assert decimals_of("garbage", 3) == 3
    assert decimals_of("0", None) is None
    assert decimals_of("-0.1", 1) == 1
    assert decimals_of("0." + "0" * 30 + "1", None) == 12


@db
def test_the_collector_keeps_each_symbols_tick_size_and_price_precision():
    entry = {
        "status": "TRADING",
        "contractType": "PERPETUAL",
        "quoteAsset": "USDT",
        "pricePrecision": 7,
        "filters": [
            {"filterType": "LOT_SIZE", "stepSize": "1"},
            {"filterType": "PRICE_FILTER", "tickSize": "0.0000010"},
        ],
    }
    record_universe({"TINYUSDT": entry, "BAREUSDT": {"status": "TRADING"}}, ms(NOW))
    tiny = Symbol.objects.get(symbol="TINYUSDT")
    assert (tiny.tick_size, tiny.price_precision) == ("0.0000010", 7)
    bare = Symbol.objects.get(symbol="BAREUSDT")
    assert (bare.tick_size, bare.price_precision) == ("", None)
    record_universe(
        {"TINYUSDT": {**entry, "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.0001"}]}}, ms(NOW)
    )
    assert Symbol.objects.get(symbol="TINYUSDT").tick_size == "0.0001"  # a tick size change is picked up


@pytest.fixture
def world(redis_client):
    users = get_user_model().objects
    me = users.create_user("me", password="pw-me-123456")
    other = users.create_user("other", password="pw-other-123456")
    UserSettings.objects.create(user=me)
    data.symbol("BTCUSDT", tick_size="0.10")
    # 30 minutes ending at NOW: minute i opens at 100 + 0.1·i, high +0.2, low −0.1, close +0.1
    data.candles("BTCUSDT", 30)
    data.metrics("BTCUSDT", NOW - timedelta(minutes=2))
    data.alert("futures_pioneer_bull", "BTCUSDT", 3)
    data.alert(f"u{other.pk}-theirs", "BTCUSDT", 4, owner=other.pk)
    client = Client()
    client.force_login(me)
    return me, client


def _buckets(interval_minutes: int) -> dict[int, list]:
    """The stored test candles grouped by their UTC-aligned bucket, computed here independently."""
    groups: dict[int, list] = {}
    for i in range(30):
        open_ms = ms(NOW - timedelta(minutes=30 - i))
        price = round(100 + i * 0.1, 8)
        start = open_ms // (interval_minutes * 60_000) * interval_minutes * 60_000
        groups.setdefault(start, []).append((price, price + 0.2, price - 0.1, price + 0.1))
    return groups


@db
@pytest.mark.parametrize(("interval", "minutes"), [("1m", 1), ("5m", 5), ("15m", 15), ("1h", 60)])
def test_the_chart_aggregates_candles_on_the_server_into_utc_aligned_bars(world, interval, minutes):
    _, client = world
    body = client.get("/api/chart/BTCUSDT", {"interval": interval}).json()
    expected = _buckets(minutes)
    assert [bar["open_time"] for bar in body["bars"]] == sorted(expected)
    for bar in body["bars"]:
        group = expected[bar["open_time"]]
        assert bar["open"] == pytest.approx(group[0][0])
        assert bar["high"] == pytest.approx(max(g[1] for g in group))
        assert bar["low"] == pytest.approx(min(g[2] for g in group))
        assert bar["close"] == pytest.approx(group[-1][3])
        assert bar["quote_volume"] == pytest.approx(1000.5 * len(group))
        assert bar["trades"] == 7 * len(group)
    assert body["price_decimals"] == 1 and body["tick_size"] == "0.10"


@db
def test_the_chart_returns_only_the_newest_bars_asked_for(world):
    _, client = world
    body = client.get("/api/chart/BTCUSDT", {"interval": "1m", "bars": 3}).json()
    assert [bar["open_time"] for bar in body["bars"]] == [ms(NOW - timedelta(minutes=m)) for m in (3, 2, 1)]


@db
def test_each_bar_carries_the_stored_indicators_of_its_last_minute(world):
    _, client = world
    body = client.get("/api/chart/BTCUSDT", {"interval": "1m"}).json()
    assert body["indicators"] == [
        {
            "open_time": ms(NOW - timedelta(minutes=2)),
            "rsi_14": 61.25,
            "macd": 0.1,
            "macd_signal": None,  # unknown stays unknown
            "macd_hist": None,
            "bb_upper": 103.0,
            "bb_middle": 101.0,
            "bb_lower": 99.0,
            "vcp": 0.3,
        }
    ]


@db
def test_the_chart_marks_only_alerts_the_viewer_may_see(world):
    _, client = world
    alerts = client.get("/api/chart/BTCUSDT", {"interval": "1m"}).json()["alerts"]
    assert [(a["rule"], a["open_time"]) for a in alerts] == [
        ("futures_pioneer_bull", ms(NOW - timedelta(minutes=3)))
    ]
    assert alerts[0]["rule_name"] == "Futures Pioneer Bull"


@db
def test_an_unknown_interval_is_refused_with_the_choices(world):
    _, client = world
    response = client.get("/api/chart/BTCUSDT", {"interval": "7m"})
    assert response.status_code == 400
    assert response.json()["error"]["parameter"] == "interval"
    assert "1m, 5m, 15m, 1h, 4h, 1d" in response.json()["error"]["message"]


@db
def test_too_many_bars_is_refused_naming_the_limit(world, settings):
    _, client = world
    settings.API_MAX_CHART_BARS = 50
    response = client.get("/api/chart/BTCUSDT", {"bars": 51})
    assert response.status_code == 400
    assert "between 1 and 50" in response.json()["error"]["message"]
