"""alerts.selectors: the history query and the live predicate decide visibility the same way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser

from alerts.models import AlertHistory, UserSettings
from alerts.selectors import visible_alerts, visible_alerts_queryset
from alerts.visibility import AlertAudience

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"])

NOW = datetime.now(UTC).replace(second=0, microsecond=0)


def stored(rule: str, symbol: str, minutes_ago: int, owner=None, volume_1d=1e7) -> dict:
    return AlertHistory.objects.create(
        rule=rule,
        rule_name=rule,
        severity="info",
        direction="bull",
        symbol=symbol,
        time=NOW - timedelta(minutes=minutes_ago),
        triggered_at=NOW,
        price=1.0,
        metrics={} if volume_1d == "missing" else {"volume_1d": volume_1d},
        owner_id=owner,
    ).to_payload()


@pytest.fixture
def world():
    users = get_user_model().objects
    me, other = users.create_user("me"), users.create_user("other")
    UserSettings.objects.create(
        user=me,
        watchlist=["BTCUSDT", "ETHUSDT"],
        muted_rules={"muted_rule": None, "expired_mute": (NOW - timedelta(minutes=5)).isoformat()},
        muted_symbols={"ETHUSDT": (NOW + timedelta(hours=1)).isoformat()},
        min_volume_1d=1e6,
    )
    alerts = [
        stored("r", "BTCUSDT", 1),
        stored("r", "ETHUSDT", 2),  # symbol muted
        stored("r", "XRPUSDT", 3),  # off the watchlist
        stored("muted_rule", "BTCUSDT", 4),
        stored("expired_mute", "BTCUSDT", 5),
        stored("r2", "BTCUSDT", 6, volume_1d=5e5),
        stored("r3", "BTCUSDT", 7, volume_1d=None),
        stored("r4", "BTCUSDT", 8, volume_1d="missing"),
        stored(f"u{me.pk}-mine", "XRPUSDT", 9, owner=me.pk, volume_1d=None),
        stored(f"u{other.pk}-theirs", "BTCUSDT", 10, owner=other.pk),
        stored("r", "BTCUSDT", 60 * 30),  # older than the window used below
    ]
    return me, other, alerts


def test_the_query_and_the_live_predicate_agree_for_a_user_with_settings(world):
    me, _, alerts = world
    audience = AlertAudience.for_user(me)
    expected = [a["id"] for a in alerts if audience.is_visible(a)]
    assert [a["id"] for a in visible_alerts(me, limit=1000)] == expected
    assert [a["symbol"] + "/" + a["rule"] for a in visible_alerts(me, limit=1000)] == [
        "BTCUSDT/r",
        "BTCUSDT/expired_mute",
        f"XRPUSDT/u{me.pk}-mine",
        "BTCUSDT/r",
    ]


def test_anonymous_viewers_see_every_global_alert_and_no_personal_one(world):
    _, _, alerts = world
    shown = [a["id"] for a in visible_alerts(AnonymousUser(), limit=1000)]
    assert shown == [a["id"] for a in alerts if a["owner"] is None]
    assert shown == [a["id"] for a in visible_alerts(None, limit=1000)]


def test_filters_limit_and_since_narrow_the_result_newest_first(world):
    _, other, alerts = world
    assert visible_alerts(other, symbols=["BTCUSDT"], rules=[f"u{other.pk}-theirs"]) == [alerts[9]]
    assert visible_alerts(other, symbols=[]) == [] and visible_alerts(other, rules=[]) == []
    since = int((NOW - timedelta(hours=24)).timestamp() * 1000)
    recent = visible_alerts(other, since=since, limit=3)
    assert [a["id"] for a in recent] == [a["id"] for a in alerts[:3]]
    assert visible_alerts_queryset(other, since=NOW - timedelta(hours=24)).count() == 9
