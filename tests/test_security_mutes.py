"""Mutes are bounded (docs/security.md): at most ALERTS_MAX_MUTES muted rules and as many
muted symbols per user, with a clear error on the settings page; expired mutes do not count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from alerts import services
from alerts.models import UserSettings

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"])


@pytest.fixture
def me(redis_client, settings):
    settings.ALERTS_MAX_MUTES = 2
    return get_user_model().objects.create_user("muter")


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_mute_over_the_limit_is_refused_on_the_settings_page_naming_the_field(me):
    client = signed_in(me)
    for symbol in ("AAAUSDT", "BBBUSDT"):
        assert (
            client.post("/settings/mutes", {"kind": "symbol", "name": symbol, "hours": "4"}).status_code
            == 302
        )
    refused = client.post("/settings/mutes", {"kind": "symbol", "name": "CCCUSDT", "hours": "4"})
    assert refused.status_code == 400
    assert refused.context["mute_form"].errors == {
        "name": ["at most 2 muted symbols (ALERTS_MAX_MUTES); unmute one first"]
    }
    assert "at most 2 muted symbols" in refused.content.decode()
    assert set(UserSettings.objects.get(user=me).muted_symbols) == {"AAAUSDT", "BBBUSDT"}


def test_changing_an_existing_mute_and_muting_rules_are_within_their_own_limits(me):
    client = signed_in(me)
    for symbol in ("AAAUSDT", "BBBUSDT"):
        client.post("/settings/mutes", {"kind": "symbol", "name": symbol, "hours": "4"})
    assert (
        client.post("/settings/mutes", {"kind": "symbol", "name": "AAAUSDT", "hours": ""}).status_code == 302
    )
    for rule in ("futures_top_hunter", "futures_pioneer_bull"):
        assert client.post("/settings/mutes", {"kind": "rule", "name": rule, "hours": ""}).status_code == 302
    row = UserSettings.objects.get(user=me)
    assert row.muted_symbols["AAAUSDT"] is None and len(row.muted_rules) == 2


def test_expired_mutes_do_not_count_and_are_dropped(me):
    long_ago = datetime.now(UTC) - timedelta(days=30)
    services.mute(me, kind="symbol", name="OLDUSDT", hours=1, now=long_ago)
    services.mute(me, kind="symbol", name="AAAUSDT", hours=None)
    services.mute(me, kind="symbol", name="BBBUSDT", hours=None)
    assert set(UserSettings.objects.get(user=me).muted_symbols) == {"AAAUSDT", "BBBUSDT"}
