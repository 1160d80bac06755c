"""The rules admin (filters, validation naming the column, enable/disable, backtest on stored data), the
user settings and alert history admin, and personal-rule writes (docs/contract.md §6, §8; docs/alerts.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.core.exceptions import ValidationError

from alerts import services
from alerts.models import AlertHistory, AlertRule

from .test_backtest import T0, pioneer_rows, store_candles

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)

CHANGELIST = "/admin/alerts/alertrule/"


@pytest.fixture
def rules(django_user_model):
    AlertRule.objects.all().delete()
    ann = django_user_model.objects.create_user("ann", password="pw-123456789")
    AlertRule.objects.create(slug="global_pump", name="Pump", expression="change_5m > 1", severity="warning")
    AlertRule.objects.create(slug="global_dump", name="Dump", expression="change_5m < -1", enabled=False)
    AlertRule.objects.create(
        slug=f"u{ann.pk}-mine", name="Mine", expression="change_1h > 2", owner=ann, mode="intrabar"
    )
    return ann


def listed(response) -> set[str]:
    text = response.content.decode()
    return {slug for slug in AlertRule.objects.values_list("slug", flat=True) if f">{slug}<" in text}


def test_the_rule_list_filters_by_enabled_owner_mode_and_severity(admin_client, rules):
    ann = rules
    assert listed(admin_client.get(CHANGELIST)) == {"global_pump", "global_dump", f"u{ann.pk}-mine"}
    assert listed(admin_client.get(CHANGELIST + "?enabled__exact=0")) == {"global_dump"}
    assert listed(admin_client.get(CHANGELIST + "?owner=global")) == {"global_pump", "global_dump"}
    assert listed(admin_client.get(CHANGELIST + f"?owner={ann.pk}")) == {f"u{ann.pk}-mine"}
    assert listed(admin_client.get(CHANGELIST + "?mode__exact=intrabar")) == {f"u{ann.pk}-mine"}
    assert listed(admin_client.get(CHANGELIST + "?severity__exact=warning")) == {"global_pump"}


def rule_form(**overrides) -> dict:
    return {
        "slug": "typo",
        "name": "Typo",
        "description": "",
        "expression": "change_1h > 1",
        "severity": "info",
        "direction": "neutral",
        "mode": "bar_close",
        "cooldown_seconds": "300",
        "enabled": "on",
        "owner": "",
        **overrides,
    }


def test_saving_a_bad_expression_names_the_problem_and_its_column(admin_client, rules):
    response = admin_client.post(CHANGELIST + "add/", rule_form(expression="chnage_1h > 1"))
    assert response.status_code == 200
    assert "unknown metric &#x27;chnage_1h&#x27; at column 1" in response.content.decode()
    assert "did you mean change_1h?" in response.content.decode()
    assert not AlertRule.objects.filter(slug="typo").exists()
    response = admin_client.post(CHANGELIST + "add/", rule_form(expression="change_1h > 1 and"))
    assert "column" in response.content.decode() and not AlertRule.objects.filter(slug="typo").exists()


def test_saving_an_edit_changes_the_rule_and_its_updated_at(admin_client, rules):
    rule = AlertRule.objects.get(slug="global_pump")
    before = rule.updated_at
    response = admin_client.post(
        f"{CHANGELIST}{rule.pk}/change/",
        rule_form(slug="global_pump", name="Pump", expression="change_5m > 3"),
    )
    assert response.status_code == 302
    rule.refresh_from_db()
    assert rule.expression == "change_5m > 3" and rule.updated_at > before


def test_enable_and_disable_actions(admin_client, rules):
    ids = list(AlertRule.objects.values_list("pk", flat=True))
    admin_client.post(CHANGELIST, {"action": "disable", "_selected_action": ids})
    assert not AlertRule.objects.filter(enabled=True).exists()
    admin_client.post(CHANGELIST, {"action": "enable", "_selected_action": ids[:1]})
    assert list(AlertRule.objects.filter(enabled=True).values_list("pk", flat=True)) == ids[:1]


def test_the_backtest_action_shows_alert_counts_and_symbols_per_rule(admin_client, rules):
    store_candles("BTCUSDT", pioneer_rows())
    store_candles("ETHUSDT", pioneer_rows())
    store_candles("SOLUSDT", pioneer_rows(25))
    selected = AlertRule.objects.filter(slug__in=["global_pump", "global_dump"])
    response = admin_client.post(
        CHANGELIST, {"action": "backtest_on_stored_data", "_selected_action": [r.pk for r in selected]}
    )
    assert response.status_code == 200
    text = response.content.decode()
    assert "3 symbols" in text
    # change_5m > 1 holds at minutes 30..34; with the 300 s cooldown it fires once per symbol
    assert '<td>global_pump</td>\n      <td class="alert-count">2</td>' in text
    assert "BTCUSDT (1), ETHUSDT (1)" in text
    assert '<td>global_dump</td>\n      <td class="alert-count">0</td>' in text


def test_user_settings_and_alert_history_pages_open_and_history_is_read_only(admin_client, rules):
    AlertHistory.objects.create(
        rule="global_pump",
        rule_name="Pump",
        severity="info",
        direction="bull",
        symbol="BTCUSDT",
        time=datetime.fromtimestamp(T0 / 1000, UTC),
        triggered_at=datetime.now(UTC),
        price=1.0,
        metrics={"change_5m": 2.0, "volume_1d": None},
    )
    assert admin_client.get("/admin/alerts/usersettings/").status_code == 200
    history = admin_client.get("/admin/alerts/alerthistory/?late__exact=0")
    assert history.status_code == 200 and "BTCUSDT" in history.content.decode()
    assert admin_client.get("/admin/alerts/alerthistory/add/").status_code == 403


def test_personal_rules_are_validated_and_limited_per_user(rules, settings, django_user_model):
    ann = rules
    settings.ALERTS_MAX_PERSONAL_RULES = 2
    rule = services.create_personal_rule(ann, name="Big move!", expression="abs(change_1h) > 3")
    assert rule.slug == f"u{ann.pk}-big_move" and rule.owner_id == ann.pk
    with pytest.raises(ValidationError, match="at most 2 personal rules"):
        services.create_personal_rule(ann, name="Third", expression="change_1h > 1")
    with pytest.raises(ValidationError, match="unknown metric"):
        services.update_rule(rule, expression="change_1hh > 1")
    services.update_rule(rule, expression="change_1h > 4")  # editing does not count against the limit
    bob = django_user_model.objects.create_user("bob", password="pw-123456789")
    assert services.create_personal_rule(bob, name="Third", expression="change_1h > 1").owner_id == bob.pk
