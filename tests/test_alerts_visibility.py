"""alerts.visibility: the one rule of who may see an alert, in memory and in SQL, with bad stored values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model

from alerts.models import AlertHistory, UserSettings
from alerts.visibility import AlertAudience, is_volume, mute_expiry

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def payload(rule="r", symbol="BTCUSDT", owner=None, **metrics) -> dict:
    return {"rule": rule, "symbol": symbol, "owner": owner, "metrics": metrics}


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (None, None),
        ("2026-03-01T13:00:00+00:00", datetime(2026, 3, 1, 13, tzinfo=UTC)),
        ("2026-03-01T13:00:00", datetime(2026, 3, 1, 13, tzinfo=UTC)),  # no zone: UTC
        ("next tuesday", None),  # does not parse: until unmuted
        ("", None),
        (1767225600, None),  # not a string: until unmuted
        ({"until": "2026-03-01"}, None),
    ],
)
def test_a_mute_expiry_that_does_not_parse_means_muted_until_lifted(stored, expected):
    assert mute_expiry(stored) == expected


@pytest.mark.parametrize(
    ("value", "number"),
    [
        (1e7, True),
        (10_000_000, True),
        (0, True),
        (True, False),
        (False, False),
        ("1e7", False),
        (None, False),
    ],
)
def test_only_a_json_number_is_a_volume(value, number):
    assert is_volume(value) is number


def test_personal_alerts_go_to_their_owner_only_and_unfiltered():
    mine = AlertAudience(
        user_id=7, watchlist=frozenset({"ETHUSDT"}), muted_rules={"u7-x": None}, min_volume_1d=1e9
    )
    assert mine.is_visible(payload(rule="u7-x", owner=7))
    assert not AlertAudience(user_id=8).is_visible(payload(owner=7))
    assert not AlertAudience().is_visible(payload(owner=7))


def test_anonymous_viewers_and_users_without_settings_see_every_global_alert():
    for audience in (AlertAudience(), AlertAudience.of(5, None)):
        assert audience.is_visible(payload(symbol="ANYUSDT"))


def test_a_global_alert_passes_the_watchlist_the_mutes_and_the_volume_floor():
    audience = AlertAudience(
        user_id=1,
        watchlist=frozenset({"BTCUSDT", "ETHUSDT"}),
        muted_rules={"forever": None, "over": NOW - timedelta(minutes=1)},
        muted_symbols={"ETHUSDT": NOW + timedelta(hours=1)},
        min_volume_1d=1e6,
    )
    assert audience.is_visible(payload(volume_1d=1e6), NOW)
    assert audience.is_visible(payload(rule="over", volume_1d=2e6), NOW)
    assert not audience.is_visible(payload(symbol="XRPUSDT", volume_1d=2e6), NOW)
    assert not audience.is_visible(payload(rule="forever", volume_1d=2e6), NOW)
    assert not audience.is_visible(payload(symbol="ETHUSDT", volume_1d=2e6), NOW)
    assert audience.is_visible(payload(symbol="ETHUSDT", volume_1d=2e6), NOW + timedelta(hours=2))
    assert not audience.is_visible(payload(volume_1d=5e5), NOW)
    assert not audience.is_visible(payload(), NOW)  # volume unknown


@pytest.mark.django_db(databases=["default", "timeseries"])
def test_bad_stored_values_decide_the_same_in_memory_and_in_sql():
    user = get_user_model().objects.create_user("bad-values")
    UserSettings.objects.create(
        user=user,
        muted_rules={"garbled": "next tuesday", "numeric": 42, "naive_future": "2999-01-01T00:00:00"},
        muted_symbols={"OLDUSDT": "2000-01-01T00:00:00"},
        min_volume_1d=1e6,
    )
    cases = {
        ("ok", "BTCUSDT", 2e6): True,
        ("garbled", "BTCUSDT", 2e6): False,  # unparsable expiry: muted until lifted
        ("numeric", "BTCUSDT", 2e6): False,
        ("naive_future", "BTCUSDT", 2e6): False,
        ("ok", "OLDUSDT", 2e6): True,  # naive expiry in the past (read as UTC): over
        ("bool", "BTCUSDT", True): False,  # a boolean is not a volume
        ("string", "BTCUSDT", "5e9"): False,  # nor is a string
        ("null", "BTCUSDT", None): False,
        ("low", "BTCUSDT", 5e5): False,
    }
    rows = {
        AlertHistory.objects.create(
            rule=rule,
            rule_name=rule,
            severity="info",
            direction="bull",
            symbol=symbol,
            time=NOW - timedelta(minutes=index),
            triggered_at=NOW,
            price=1.0,
            metrics={"volume_1d": volume},
        ).pk: expected
        for index, ((rule, symbol, volume), expected) in enumerate(cases.items())
    }
    audience = AlertAudience.for_user(user)
    in_memory = {pk for pk in rows if audience.is_visible(AlertHistory.objects.get(pk=pk).to_payload())}
    in_sql = set(AlertHistory.objects.filter(audience.q()).values_list("pk", flat=True))
    assert in_memory == in_sql == {pk for pk, expected in rows.items() if expected}
