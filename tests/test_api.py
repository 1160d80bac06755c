"""The read-only JSON API: what a script gets, its errors, its access control and its rate limit."""

from __future__ import annotations

import base64
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from alerts.models import UserSettings
from cryptomon.contract.times import to_ms as ms
from tests import dashboard_data as data

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"])

NOW = data.NOW


@pytest.fixture
def world(redis_client):
    users = get_user_model().objects
    me = users.create_user("me", password="pw-me-123456")
    other = users.create_user("other", password="pw-other-123456")
    UserSettings.objects.create(user=me, muted_symbols={"XRPUSDT": None})
    for name in ("BTCUSDT", "ETHUSDT", "XRPUSDT", "币安人生USDT"):
        data.symbol(name)
    data.symbol("OLDUSDT", trading=False)
    data.candles("BTCUSDT", 30)
    data.metrics("BTCUSDT", NOW - timedelta(minutes=2), change_1h=1.0)
    data.metrics("BTCUSDT", NOW - timedelta(minutes=1), change_1h=2.0, price=102.0)
    data.alert("futures_pioneer_bull", "BTCUSDT", 1)
    data.alert("futures_pioneer_bear", "ETHUSDT", 2, direction="bear")
    data.alert("futures_pioneer_bull", "XRPUSDT", 3)  # muted for me
    data.alert("futures_top_hunter", "币安人生USDT", 4, direction="bear", late=True)
    data.alert(f"u{me.pk}-mine", "ETHUSDT", 5, owner=me.pk)
    data.alert(f"u{other.pk}-theirs", "BTCUSDT", 6, owner=other.pk)
    client = Client()
    client.force_login(me)
    return me, other, client


def test_symbols_lists_every_symbol_with_its_newest_daily_figures(world):
    _, _, client = world
    body = client.get("/api/symbols").json()
    by_name = {row["symbol"]: row for row in body["symbols"]}
    assert set(by_name) == {"BTCUSDT", "ETHUSDT", "XRPUSDT", "币安人生USDT", "OLDUSDT"}
    assert by_name["BTCUSDT"]["price"] == 102.0
    assert by_name["BTCUSDT"]["open_time"] == ms(NOW - timedelta(minutes=1))
    assert by_name["BTCUSDT"]["volume_1d"] == 2_500_000.0
    assert by_name["ETHUSDT"]["price"] is None  # no stored metrics: unknown, not zero
    trading = client.get("/api/symbols", {"trading": "false"}).json()["symbols"]
    assert [row["symbol"] for row in trading] == ["OLDUSDT"]


def test_alerts_are_the_callers_visible_alerts_newest_first(world):
    me, other, client = world
    alerts = client.get("/api/alerts").json()["alerts"]
    assert [(a["symbol"], a["rule"]) for a in alerts] == [
        ("BTCUSDT", "futures_pioneer_bull"),
        ("ETHUSDT", "futures_pioneer_bear"),
        ("币安人生USDT", "futures_top_hunter"),
        ("ETHUSDT", f"u{me.pk}-mine"),
    ]
    assert alerts[0]["v"] == 1 and alerts[0]["id"] == f"futures_pioneer_bull:BTCUSDT:{alerts[0]['open_time']}"
    assert alerts[2]["late"] is True
    assert all(a["owner"] != other.pk for a in alerts)


def test_alerts_hide_what_bad_stored_settings_mute_or_floor(world):
    """alerts.visibility: an unparsable mute expiry mutes until lifted; a boolean volume is not a number."""
    me, _, client = world
    UserSettings.objects.filter(user=me).update(
        muted_rules={"futures_pioneer_bear": "not a time"}, min_volume_1d=1e6
    )
    data.alert("boolean_volume", "BTCUSDT", 7, volume_1d=True)
    alerts = client.get("/api/alerts").json()["alerts"]
    assert [(a["symbol"], a["rule"]) for a in alerts] == [
        ("BTCUSDT", "futures_pioneer_bull"),
        ("币安人生USDT", "futures_top_hunter"),
        ("ETHUSDT", f"u{me.pk}-mine"),
    ]


def test_alert_filters_narrow_the_list(world):
    me, _, client = world
    get = lambda **params: [a["symbol"] for a in client.get("/api/alerts", params).json()["alerts"]]  # noqa: E731
    assert get(direction="bear") == ["ETHUSDT", "币安人生USDT"]
    assert get(symbol="币安人生USDT") == ["币安人生USDT"]
    assert get(rule=f"u{me.pk}-mine") == ["ETHUSDT"]
    assert get(since=ms(NOW - timedelta(minutes=2))) == ["BTCUSDT", "ETHUSDT"]
    assert get(until=(NOW - timedelta(minutes=3)).isoformat()) == ["币安人生USDT", "ETHUSDT"]


def test_alerts_come_a_page_at_a_time_with_a_link_to_the_next(world):
    _, _, client = world
    first = client.get("/api/alerts", {"page_size": 3, "direction": "bull"}).json()
    assert first["count"] == 2 and first["next"] is None
    first = client.get("/api/alerts", {"page_size": 3}).json()
    assert (first["count"], len(first["alerts"]), first["page"]) == (4, 3, 1)
    second = client.get(first["next"]).json()
    assert len(second["alerts"]) == 1 and second["next"] is None
    assert second["alerts"][0]["rule"].endswith("-mine")


def test_another_users_personal_alerts_never_appear(world):
    me, other, _ = world
    client = Client()
    client.force_login(other)
    alerts = client.get("/api/alerts").json()["alerts"]
    owners = {a["owner"] for a in alerts}
    assert me.pk not in owners and other.pk in owners
    assert client.get("/api/alerts", {"rule": f"u{me.pk}-mine"}).json()["alerts"] == []


def test_candles_and_metrics_carry_the_derivatives_fields_null_when_unknown(world):
    from decimal import Decimal

    from metrics.models import MetricBar, StoredCandle

    _, _, client = world
    newest = StoredCandle.objects.filter(symbol="BTCUSDT").order_by("-time").first()
    StoredCandle.objects.filter(symbol="BTCUSDT", time=newest.time).update(
        mark_close=103.25,
        index_close=103.0,
        funding_rate=-0.0002,
        funding_interval_hours=4.0,
        next_funding_time=NOW + timedelta(hours=2),
        open_interest=5000.5,
        liq_long_quote=Decimal("1500000.12345678"),
        liq_short_quote=Decimal("0"),
        liq_count=3,
    )
    rows = client.get("/api/candles/BTCUSDT", {"limit": 2}).json()["candles"]
    assert rows[1]["mark_close"] == 103.25 and rows[1]["funding_rate"] == -0.0002
    assert rows[1]["next_funding_time"] == ms(NOW + timedelta(hours=2)) and rows[1]["liq_count"] == 3
    assert rows[1]["liq_long_quote"] == 1500000.12345678 and rows[1]["open_interest"] == 5000.5
    assert all(
        rows[0][name] is None for name in ("mark_close", "liq_long_quote", "liq_count", "next_funding_time")
    )
    MetricBar.objects.filter(symbol="BTCUSDT", timeframe="1h").update(
        oi_change=2.5, liq_long=10.0, basis=0.25
    )
    metrics = client.get("/api/metrics/BTCUSDT").json()["metrics"]
    assert (
        metrics["oi_change_1h"] == 2.5 and metrics["liq_long_1h"] == 10.0 and metrics["liq_short_1h"] is None
    )
    assert metrics["oi_change_4h"] is None  # no 4h row: unknown
    assert "funding_apr" in metrics and metrics["funding_apr"] is None


def test_candles_of_a_non_ascii_symbol_and_a_time_range(world):
    _, _, client = world
    data.candles("币安人生USDT", 10)
    response = client.get(f"/api/candles/{quote('币安人生USDT')}")
    assert response.status_code == 200
    body = response.json()
    assert body["symbol"] == "币安人生USDT" and len(body["candles"]) == 10
    start = ms(NOW - timedelta(minutes=20))
    end = ms(NOW - timedelta(minutes=10))
    rows = client.get("/api/candles/BTCUSDT", {"start": start, "end": end}).json()["candles"]
    assert [row["open_time"] for row in rows] == list(range(start, end, 60_000))
    assert rows[0]["quote_volume"] == 1000.5 and rows[0]["trades"] == 7 and rows[0]["source"] == "ws"
    newest = client.get("/api/candles/BTCUSDT", {"limit": 2}).json()["candles"]
    assert [row["open_time"] for row in newest] == [
        ms(NOW - timedelta(minutes=2)),
        ms(NOW - timedelta(minutes=1)),
    ]


def test_metrics_are_the_newest_bar_with_every_metric_name(world):
    _, _, client = world
    body = client.get("/api/metrics/BTCUSDT").json()
    assert body["open_time"] == ms(NOW - timedelta(minutes=1))
    assert body["metrics"]["change_1h"] == 2.0
    assert body["metrics"]["change_4h"] is None  # no 4h row: unknown
    assert body["metrics"]["rsi_14"] == 61.25 and body["metrics"]["macd_signal"] is None
    assert body["timeframes"]["1d"]["volume"] == 2_500_000.0
    earlier = client.get("/api/metrics/BTCUSDT", {"at": ms(NOW - timedelta(minutes=2))}).json()
    assert earlier["metrics"]["change_1h"] == 1.0


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/api/alerts", {"since": "yesterday"}, "since"),
        ("/api/alerts", {"page_size": "100000"}, "page_size"),
        ("/api/alerts", {"page": "0"}, "page"),
        ("/api/alerts", {"direction": "up"}, "direction"),
        ("/api/alerts", {"sort": "price"}, "sort"),
        ("/api/candles/BTCUSDT", {"start": "2", "end": "1"}, "end"),
        ("/api/candles/BTCUSDT", {"limit": "-5"}, "limit"),
        ("/api/metrics/BTCUSDT", {"at": "99999999999999999999"}, "at"),
        ("/api/symbols", {"trading": "maybe"}, "trading"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(world, path, params, parameter):
    _, _, client = world
    response = client.get(path, params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == 400 and error["code"] == "bad_parameter"
    assert error["parameter"] == parameter and error["message"].startswith(f"{parameter}: ")


def test_unknown_symbols_and_paths_are_404s_in_the_same_shape(world):
    _, _, client = world
    for path in ("/api/candles/NOPEUSDT", "/api/metrics/ETHUSDT", "/api/nothing"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert set(response.json()["error"]) == {"status", "code", "message", "parameter"}


def test_the_api_is_read_only(world):
    _, _, client = world
    response = client.post("/api/alerts")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_anonymous_callers_are_refused_unless_the_dashboard_is_public(world, settings):
    anonymous = Client()
    response = anonymous.get("/api/alerts")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    settings.ALLOW_ANONYMOUS_DASHBOARD = True
    alerts = anonymous.get("/api/alerts").json()["alerts"]
    assert alerts and all(a["owner"] is None for a in alerts)
    assert len(alerts) == 4  # every global alert, unfiltered (no settings to apply)


def test_scripts_can_use_http_basic_authentication(world):
    me, _, _ = world
    token = base64.b64encode(b"me:pw-me-123456").decode()
    response = Client().get("/api/alerts", HTTP_AUTHORIZATION=f"Basic {token}")
    assert response.status_code == 200
    assert any(a["owner"] == me.pk for a in response.json()["alerts"])
    wrong = base64.b64encode(b"me:nope").decode()
    response = Client().get("/api/alerts", HTTP_AUTHORIZATION=f"Basic {wrong}")
    assert response.status_code == 401 and "WWW-Authenticate" in response


def test_each_client_is_rate_limited_per_minute(world, settings):
    _, other, client = world
    settings.API_RATE_LIMIT_PER_MINUTE = 3
    responses = [client.get("/api/symbols") for _ in range(7)]  # 7 > 2 × 3: over the limit in some minute
    assert [r.status_code for r in responses[:3]] == [200, 200, 200]
    limited = [r for r in responses if r.status_code == 429]
    assert limited, [r.status_code for r in responses]
    assert limited[0].json()["error"]["code"] == "rate_limited" and int(limited[0]["Retry-After"]) >= 1
    someone_else = Client()
    someone_else.force_login(other)
    assert someone_else.get("/api/symbols").status_code == 200  # counted per client
