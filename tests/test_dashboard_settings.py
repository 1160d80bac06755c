"""The settings page: watchlist, mutes, volume floor, time zone and personal rules, each user's own only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from alerts.models import AlertRule, UserSettings
from alerts.visibility import AlertAudience

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"])

RULE = {
    "name": "Quick pump",
    "expression": "change_5m > 1 and volume_5m > 100_000",
    "description": "fast move",
    "severity": "warning",
    "direction": "bull",
    "mode": "bar_close",
    "cooldown_seconds": "600",
    "enabled": "on",
}


@pytest.fixture
def users(redis_client):
    manager = get_user_model().objects
    me, other = manager.create_user("me", password="pw-me-123456"), manager.create_user("other")
    client = Client()
    client.force_login(me)
    return me, other, client


def test_settings_save_watchlist_volume_floor_and_time_zone(users):
    me, _, client = users
    response = client.post(
        "/settings/preferences",
        {
            "watchlist": "btcusdt, ETHUSDT\n币安人生USDT BTCUSDT",
            "min_volume_1d": "1000000",
            "timezone": "Europe/Paris",
        },
    )
    assert response.status_code == 302
    row = UserSettings.objects.get(user=me)
    assert row.watchlist == ["BTCUSDT", "ETHUSDT", "币安人生USDT"]
    assert (row.min_volume_1d, row.timezone) == (1_000_000.0, "Europe/Paris")
    page = client.get("/settings/").content.decode()
    assert "Settings saved." in page and "Europe/Paris" in page
    assert AlertAudience.for_user(me).watchlist == frozenset(row.watchlist)  # the live feed filters on it


def test_an_unknown_time_zone_is_refused_with_a_message(users):
    me, _, client = users
    response = client.post(
        "/settings/preferences", {"watchlist": "", "min_volume_1d": "", "timezone": "Mars/Base"}
    )
    assert response.status_code == 400
    assert "unknown time zone &#x27;Mars/Base&#x27;" in response.content.decode()
    assert not UserSettings.objects.filter(user=me).exists()


def test_mutes_have_an_expiry_and_can_be_lifted(users):
    me, _, client = users
    before = datetime.now(UTC)
    client.post("/settings/mutes", {"kind": "symbol", "name": "ethusdt", "hours": "4"})
    client.post("/settings/mutes", {"kind": "rule", "name": "futures_top_hunter", "hours": ""})
    row = UserSettings.objects.get(user=me)
    until = datetime.fromisoformat(row.muted_symbols["ETHUSDT"])
    assert before + timedelta(hours=4) <= until <= datetime.now(UTC) + timedelta(hours=4)
    assert row.muted_rules == {"futures_top_hunter": None}
    audience = AlertAudience.for_user(me)
    assert audience.is_muted("futures_top_hunter", "BTCUSDT") and audience.is_muted("x", "ETHUSDT")
    assert not audience.is_muted("x", "ETHUSDT", now=until + timedelta(seconds=1))
    client.post("/settings/mutes/remove", {"kind": "symbol", "name": "ETHUSDT"})
    assert UserSettings.objects.get(user=me).muted_symbols == {}


def test_the_star_toggles_a_symbol_on_the_watchlist(users):
    me, _, client = users
    assert client.post("/watchlist/toggle", {"symbol": "币安人生USDT"}).json() == {
        "symbol": "币安人生USDT",
        "starred": True,
    }
    assert UserSettings.objects.get(user=me).watchlist == ["币安人生USDT"]
    assert client.post("/watchlist/toggle", {"symbol": "币安人生USDT"}).json()["starred"] is False
    assert UserSettings.objects.get(user=me).watchlist == []
    assert Client().post("/watchlist/toggle", {"symbol": "BTCUSDT"}).status_code == 401


def test_the_star_needs_the_csrf_token(users):
    me, _, _ = users
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(me)
    assert strict.post("/watchlist/toggle", {"symbol": "BTCUSDT"}).status_code == 403


def test_a_personal_rule_is_created_with_the_users_slug(users):
    me, _, client = users
    response = client.post("/settings/rules/new", RULE)
    assert response.status_code == 302, response.content.decode()[:2000]
    rule = AlertRule.objects.get(owner=me)
    assert rule.slug == f"u{me.pk}-quick_pump"
    assert (rule.cooldown_seconds, rule.direction, rule.severity, rule.enabled) == (
        600,
        "bull",
        "warning",
        True,
    )
    assert "Quick pump" in client.get("/settings/").content.decode()


def test_a_bad_expression_shows_the_rule_languages_message(users):
    me, _, client = users
    response = client.post("/settings/rules/new", {**RULE, "expression": "chnage_1h > 2"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "unknown metric &#x27;chnage_1h&#x27; at column 1" in page and "change_1h" in page
    assert not AlertRule.objects.filter(owner=me).exists()


def test_the_editor_checks_an_expression_as_you_type(users):
    _, _, client = users
    bad = client.post("/settings/rules/check", {"expression": "change_1h >"}).json()
    assert bad["ok"] is False and "column" in bad["message"] and bad["column"] >= 1
    good = client.post("/settings/rules/check", {"expression": "change_1h > 2 and rsi_14 < 30"}).json()
    assert good == {"ok": True, "message": "valid", "metrics": ["change_1h", "rsi_14"]}


def test_at_most_the_configured_number_of_personal_rules(users, settings):
    me, _, client = users
    settings.ALERTS_MAX_PERSONAL_RULES = 2
    for name in ("one", "two"):
        assert client.post("/settings/rules/new", {**RULE, "name": name}).status_code == 302
    response = client.post("/settings/rules/new", {**RULE, "name": "three"})
    assert response.status_code == 400 and "at most 2 personal rules" in response.content.decode()
    assert AlertRule.objects.filter(owner=me).count() == 2


def test_two_rules_of_one_user_cannot_share_a_name(users):
    _, _, client = users
    client.post("/settings/rules/new", RULE)
    response = client.post("/settings/rules/new", RULE)
    assert (
        response.status_code == 400 and "you already have a rule with this name" in response.content.decode()
    )


def test_a_personal_rule_is_edited_and_deleted(users):
    me, _, client = users
    client.post("/settings/rules/new", RULE)
    rule = AlertRule.objects.get(owner=me)
    response = client.post(
        f"/settings/rules/{rule.pk}/", {**RULE, "expression": "change_1h < -2", "enabled": ""}
    )
    assert response.status_code == 302
    rule.refresh_from_db()
    assert (rule.expression, rule.enabled) == ("change_1h < -2", False)
    client.post(f"/settings/rules/{rule.pk}/delete")
    assert not AlertRule.objects.filter(owner=me).exists()


def test_nobody_reads_or_changes_another_users_rules_or_settings(users):
    _, other, client = users
    theirs = AlertRule.objects.create(
        slug=f"u{other.pk}-private", name="Private", expression="change_1h > 9", owner=other
    )
    UserSettings.objects.create(user=other, watchlist=["SECRETUSDT"], timezone="Asia/Tokyo")
    assert client.get(f"/settings/rules/{theirs.pk}/").status_code == 404
    assert client.post(f"/settings/rules/{theirs.pk}/", {**RULE, "name": "mine now"}).status_code == 404
    assert client.post(f"/settings/rules/{theirs.pk}/delete").status_code == 404
    page = client.get("/settings/").content.decode()
    assert "SECRETUSDT" not in page and "Private" not in page and "Asia/Tokyo" not in page
    theirs.refresh_from_db()
    assert theirs.name == "Private"
    global_rule = AlertRule.objects.create(slug="global_one", name="Global", expression="change_1h > 5")
    assert client.get(f"/settings/rules/{global_rule.pk}/").status_code == 404


def test_settings_need_a_signed_in_user(users):
    anonymous = Client()
    for path in ("/settings/", "/settings/rules/new"):
        assert anonymous.get(path).status_code == 302
    assert anonymous.post("/settings/preferences", {"timezone": "UTC"}).status_code == 302
    assert anonymous.post("/settings/rules/check", {"expression": "x"}).status_code == 302


def test_the_editor_previews_a_rule_over_stored_candles(users):
    from alerts import backtest
    from alerts.decisions import RuleSpec
    from tests import dashboard_data as data

    _, _, client = users
    data.candles("BTCUSDT", 40)
    data.candles("ETHUSDT", 40, start_price=500.0)
    rising = "change_5m > 0.3"
    body = client.post("/settings/rules/preview", {"expression": rising, "cooldown_seconds": "300"}).json()
    expected = backtest.evaluate(
        "BTCUSDT", backtest.stored_candles("BTCUSDT"), [RuleSpec.build("p", rising, cooldown_seconds=300)]
    )
    assert body["ok"] is True and body["symbols_checked"] == 2
    assert body["by_symbol"] == {"BTCUSDT": len(expected)} and len(expected) >= 5  # ETH rises too slowly
    never = client.post("/settings/rules/preview", {"expression": "change_5m > 50"}).json()
    assert never["alerts"] == 0
    bad = client.post("/settings/rules/preview", {"expression": "change_5m >"}).json()
    assert bad["ok"] is False and "column" in bad["message"]
