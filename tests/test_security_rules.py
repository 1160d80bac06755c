"""Personal-rule limits (docs/contract.md §8, docs/security.md): description ≤ 500 characters,
name ≤ 120, cooldown ≥ 60 s for personal rules, at most ALERTS_MAX_PERSONAL_RULES per user — refused by the dashboard form, the admin and the model with a message
naming the field, enforced atomically, and existing rows migrated into range."""

from __future__ import annotations

import threading

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.test import Client

from alerts import services
from alerts.models import AlertRule
from tests.test_alerts_admin import rule_form

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)

RULE = {
    "name": "Quick pump",
    "expression": "change_5m > 1",
    "description": "fast move",
    "severity": "info",
    "direction": "bull",
    "mode": "bar_close",
    "cooldown_seconds": "600",
    "enabled": "on",
}
CHANGELIST = "/admin/alerts/alertrule/"


@pytest.fixture
def me(redis_client):
    return get_user_model().objects.create_user("me", password="pw-me-123456")


@pytest.fixture
def client(me) -> Client:
    client = Client()
    client.force_login(me)
    return client


def admin_form(**overrides) -> dict:
    return rule_form(**{"slug": "global_x", "name": "X", **overrides})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("description", "d" * 501, "at most 500 characters (it has 501)"),
        ("name", "n" * 121, "at most 120 characters (it has 121)"),
        ("cooldown_seconds", "59", "greater than or equal to 60"),
    ],
)
def test_the_dashboard_refuses_a_personal_rule_over_a_limit_naming_the_field(
    client, me, field, value, message
):
    response = client.post("/settings/rules/new", {**RULE, field: value})
    assert response.status_code == 400
    assert message in " ".join(response.context["form"].errors[field])
    assert message in response.content.decode()
    assert not AlertRule.objects.filter(owner=me).exists()


def test_the_dashboard_accepts_a_personal_rule_at_every_limit(client, me):
    response = client.post(
        "/settings/rules/new", {**RULE, "name": "n" * 120, "description": "d" * 500, "cooldown_seconds": "60"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    rule = AlertRule.objects.get(owner=me)
    assert (len(rule.name), len(rule.description), rule.cooldown_seconds) == (120, 500, 60)


def test_the_dashboard_refuses_to_edit_a_personal_rule_below_the_cooldown_floor(client, me):
    client.post("/settings/rules/new", RULE)
    rule = AlertRule.objects.get(owner=me)
    response = client.post(f"/settings/rules/{rule.pk}/", {**RULE, "cooldown_seconds": "0"})
    assert response.status_code == 400 and "greater than or equal to 60" in response.content.decode()
    rule.refresh_from_db()
    assert rule.cooldown_seconds == 600


def test_the_admin_refuses_a_personal_rule_below_the_cooldown_floor_or_over_the_description_limit(
    admin_client, me
):
    personal = {"slug": f"u{me.pk}-x", "owner": str(me.pk)}
    response = admin_client.post(CHANGELIST + "add/", admin_form(**personal, cooldown_seconds="0"))
    assert response.status_code == 200
    assert "a personal rule&#x27;s cooldown is at least 60 seconds" in response.content.decode()
    response = admin_client.post(CHANGELIST + "add/", admin_form(**personal, description="d" * 501))
    assert response.status_code == 200
    assert "at most 500 characters (it has 501)" in response.content.decode()
    assert not AlertRule.objects.filter(owner=me).exists()


def test_the_admin_keeps_a_zero_cooldown_for_global_rules(admin_client):
    response = admin_client.post(CHANGELIST + "add/", admin_form(cooldown_seconds="0"))
    assert response.status_code == 302
    assert AlertRule.objects.get(slug="global_x").cooldown_seconds == 0


def test_the_model_refuses_a_personal_rule_over_a_limit_naming_the_field(me):
    with pytest.raises(ValidationError) as caught:
        services.create_personal_rule(
            me, name="x", expression="change_5m > 1", description="d" * 501, cooldown_seconds=0
        )
    assert set(caught.value.message_dict) == {"description", "cooldown_seconds"}
    assert "at least 60 seconds" in caught.value.message_dict["cooldown_seconds"][0]


def test_the_personal_rule_limit_holds_when_rules_are_created_concurrently(me, settings):
    """Count-then-insert let concurrent creates pass the count together; the owner's row is locked."""
    settings.ALERTS_MAX_PERSONAL_RULES = 3
    attempts = 8
    start = threading.Barrier(attempts)
    statuses: list[int] = []

    def create(index: int) -> None:
        client = Client()
        client.force_login(me)
        start.wait()
        try:
            statuses.append(client.post("/settings/rules/new", {**RULE, "name": f"r{index}"}).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=create, args=(index,)) for index in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [302] * 3 + [400] * 5
    assert AlertRule.objects.filter(owner=me).count() == 3


BEFORE_THE_LIMITS = [("alerts", "0005_remove_usersettings_channels")]


def migrate(targets) -> MigrationExecutor:
    for alias in ("default", "timeseries"):
        executor = MigrationExecutor(connections[alias])
        executor.migrate(targets or executor.loader.graph.leaf_nodes())
    return executor


def test_existing_rules_are_migrated_into_range(me):
    try:
        old = migrate(BEFORE_THE_LIMITS).loader.project_state(BEFORE_THE_LIMITS[0]).apps
        rules = old.get_model("alerts", "AlertRule")
        rules.objects.create(
            slug=f"u{me.pk}-loud",
            name="Loud",
            description="d" * 1_500_000,
            expression="price > 0",
            cooldown_seconds=0,
            owner_id=me.pk,
        )
        rules.objects.create(slug="global_fast", name="Fast", expression="price > 0", cooldown_seconds=0)
    finally:
        migrate(None)
    loud = AlertRule.objects.get(slug=f"u{me.pk}-loud")
    assert (loud.description, loud.cooldown_seconds) == ("d" * 500, 60)
    assert AlertRule.objects.get(slug="global_fast").cooldown_seconds == 0
    loud.full_clean()
