"""What the alert worker cannot deliver it dead-letters instead of retrying forever
(docs/alerts.md "Failures"): an alert JetStream refuses, or a bar that fails every
delivery, is logged, counted, stored in `alert_dead_letters` with an operator alert, and acknowledged; the
worker goes on. And a hostile user's 50 worst-case personal rules do not stop or drop anyone's global alerts.

A real alert worker on real NATS JetStream and PostgreSQL; the operator alert in the real Valkey."""

from __future__ import annotations

import logging

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from alerts import services
from alerts.decisions import RuleSpec
from alerts.models import DESCRIPTION_MAX, AlertHistory, AlertRule, DeadLetter
from cryptomon import messaging
from cryptomon.contract import subjects
from notifications.operator import active_operator_alerts

from .test_alerts_engine import MINUTE, T0, bar, history, make_rule, publish_bar, running, until

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)


@pytest.fixture
def rules(db, redis_client):
    AlertRule.objects.all().delete()


@sync_to_async
def dead_letters() -> list[DeadLetter]:
    return list(DeadLetter.objects.order_by("id"))


async def limit_alert_messages(js, max_bytes: int) -> None:
    """The ALERTS stream refuses any message over `max_bytes`: a refusal no retry can fix."""
    config = (await js.stream_info(subjects.ALERTS_STREAM)).config
    config.max_msg_size = max_bytes
    await js.update_stream(config)


async def all_acknowledged(js, worker) -> bool:
    return (await js.consumer_info(subjects.METRICS_STREAM, worker.durable)).num_ack_pending == 0


async def test_an_alert_jetstream_refuses_is_dead_lettered_and_the_rest_is_published_and_acknowledged(
    jetstream, rules, caplog
):
    _nc, js = jetstream
    await sync_to_async(make_rule)("terse", "change_5m > 1", cooldown_seconds=0)
    await sync_to_async(make_rule)("wordy", "change_5m > 1", cooldown_seconds=0, description="w" * 500)
    await limit_alert_messages(js, 600)
    with caplog.at_level(logging.ERROR, logger="alerts.engine"):
        async with running() as worker:
            await publish_bar(js, bar("BTCUSDT", 0, 2.0))
            await publish_bar(js, bar("BTCUSDT", 1, 2.0))
            await until(lambda: worker.stats.get("alerts_bars_total") >= 2, what="both bars handled")
            await until(lambda: all_acknowledged(js, worker), what="both bars acknowledged")
            assert worker.stats.get("alerts_dead_letters_total") == 2
    stored = await js.get_last_msg(subjects.ALERTS_STREAM, "alerts.triggered.BTCUSDT")
    assert stored.headers["Nats-Msg-Id"] == f"terse:BTCUSDT:{T0 + MINUTE}"
    assert (await js.stream_info(subjects.ALERTS_STREAM)).state.messages == 2  # terse, twice
    letters = await dead_letters()
    assert [(d.kind, d.key) for d in letters] == [
        ("alert", f"wordy:BTCUSDT:{T0}"),
        ("alert", f"wordy:BTCUSDT:{T0 + MINUTE}"),
    ]
    assert letters[0].subject == "alerts.triggered.BTCUSDT"
    assert messaging.decode(letters[0].payload.encode())["description"] == "w" * 500
    assert "maximum" in letters[0].reason
    assert "dead-lettered" in caplog.text
    active = await sync_to_async(active_operator_alerts)()
    assert f"alerts_dead_letter_{letters[0].pk}" in active
    assert "wordy:BTCUSDT" in active[f"alerts_dead_letter_{letters[0].pk}"]["message"]


async def test_a_bar_that_fails_every_delivery_is_dead_lettered_after_the_configured_count(
    jetstream, rules, settings
):
    settings.ALERTS_MAX_DELIVERIES = 3
    settings.ALERTS_REDELIVERY_DELAY_SECONDS = 0.1
    _nc, js = jetstream
    await sync_to_async(make_rule)("pump", "change_5m > 1", cooldown_seconds=0)
    beyond_year_9999 = {
        **bar("BTCUSDT", 0, 2.0),
        "open_time": 6_000_000 * 10**9,
    }  # a bar the engine cannot store
    async with running() as worker:
        await publish_bar(js, beyond_year_9999)
        await publish_bar(js, bar("ETHUSDT", 0, 2.0))
        await until(lambda: worker.stats.get("alerts_dead_letters_total") >= 1, what="the dead letter")
        await until(lambda: all_acknowledged(js, worker), what="every bar acknowledged")
    assert [(r.rule, r.symbol) for r in await history()] == [("pump", "ETHUSDT")]
    [letter] = await dead_letters()
    assert (letter.kind, letter.subject, letter.deliveries) == ("message", "metrics.calculated.BTCUSDT", 3)
    assert letter.key.startswith("METRICS:")
    assert messaging.decode(letter.payload.encode())["open_time"] == 6_000_000 * 10**9
    assert "year" in letter.reason
    assert f"alerts_dead_letter_{letter.pk}" in await sync_to_async(active_operator_alerts)()


def test_dead_letters_are_listed_read_only_in_the_admin(admin_client, rules):
    letter = services.dead_letter(
        "alert", "wordy:BTCUSDT:1", "alerts.triggered.BTCUSDT", b'{"v": 1}', "too big"
    )
    listing = admin_client.get("/admin/alerts/deadletter/").content.decode()
    assert "wordy:BTCUSDT:1" in listing and "too big" in listing
    page = admin_client.get(f"/admin/alerts/deadletter/{letter.pk}/change/")
    assert page.status_code == 200 and "&quot;v&quot;: 1" in page.content.decode()
    assert admin_client.get("/admin/alerts/deadletter/add/").status_code == 403
    assert (
        admin_client.post(f"/admin/alerts/deadletter/{letter.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    assert (
        services.dead_letter("alert", "wordy:BTCUSDT:1", "alerts.triggered.BTCUSDT", b"{}", "again") is None
    )
    assert DeadLetter.objects.count() == 1


def test_an_alert_payload_is_bounded_whatever_its_rule_holds(rules):
    """A rule that never went through validation (an old row, a script) still makes a bounded alert."""
    huge = RuleSpec.build(
        "huge", "change_5m > 1", name="n" * 10_000, description="d" * 1_500_000, cooldown_seconds=0
    )
    [recorded] = services.record_many([([huge], "BTCUSDT", T0, 1.0, {"change_5m": 2.0}, False)])
    [payload] = recorded.payloads
    assert len(payload["description"]) == DESCRIPTION_MAX and len(payload["rule_name"]) == 120
    assert AlertHistory.objects.get().to_payload() == payload
    assert len(messaging.encode(payload)) < 4096


HOSTILE_RULES = 50
SYMBOLS = [f"S{index:02d}USDT" for index in range(20)]  # a minute close: one numpy wave


@sync_to_async
def hostile_user_with_worst_case_rules() -> int:
    user = get_user_model().objects.create_user("hostile", password="pw-hostile-12345")
    for index in range(HOSTILE_RULES):
        services.create_personal_rule(
            user,
            name=f"everything {index}",
            expression="volume_1d > 0",  # true on every symbol, every bar
            description="h" * DESCRIPTION_MAX,
            cooldown_seconds=60,  # the floor: once a minute per symbol
        )
    return user.pk


async def test_a_hostile_users_fifty_worst_case_rules_neither_stop_nor_drop_global_alerts(jetstream, rules):
    nc, js = jetstream
    await sync_to_async(make_rule)("global_pump", "change_5m > 1", cooldown_seconds=0)
    hostile = await hostile_user_with_worst_case_rules()
    global_seen: list[str] = []

    async def on_alert(message) -> None:
        payload = messaging.decode(message.data)
        if payload["owner"] is None:
            global_seen.append(payload["id"])

    await nc.subscribe("alerts.triggered.>", cb=on_alert)
    minutes = 3
    async with running() as worker:
        for minute in range(minutes):
            for symbol in SYMBOLS:
                await publish_bar(js, bar(symbol, minute, 2.0))
        for symbol in SYMBOLS:  # minute 0 again, as a redelivery would: nothing new
            await publish_bar(js, bar(symbol, 0, 2.0), msg_id=f"again-{symbol}")
        total = minutes * len(SYMBOLS) + len(SYMBOLS)
        await until(lambda: worker.stats.get("alerts_bars_total") >= total, timeout=60, what="every bar")
        await until(lambda: all_acknowledged(js, worker), timeout=60, what="every bar acknowledged")
        await until(lambda: len(global_seen) >= minutes * len(SYMBOLS), timeout=30, what="global alerts")
    expected_global = {f"global_pump:{s}:{T0 + m * MINUTE}" for s in SYMBOLS for m in range(minutes)}
    assert set(global_seen) == expected_global
    assert {r.alert_id for r in await history(rule="global_pump")} == expected_global
    personal = await history(owner_id=hostile)
    assert (
        len(personal) == HOSTILE_RULES * len(SYMBOLS) * minutes
    )  # one per rule, symbol and minute: the cooldown
    assert await dead_letters() == []
    stream = await js.stream_info(subjects.ALERTS_STREAM)
    assert stream.state.messages == len(expected_global) + len(personal)


def test_marking_a_dead_letter_handled_in_the_admin_resolves_its_operator_alert(admin_client, rules):
    first = services.dead_letter("alert", "a:BTCUSDT:1", "alerts.triggered.BTCUSDT", b"{}", "too big")
    second = services.dead_letter("alert", "b:BTCUSDT:1", "alerts.triggered.BTCUSDT", b"{}", "too big")
    assert {f"alerts_dead_letter_{first.pk}", f"alerts_dead_letter_{second.pk}"} <= set(
        active_operator_alerts()
    )
    response = admin_client.post(
        "/admin/alerts/deadletter/", {"action": "mark_handled", "_selected_action": [first.pk]}, follow=True
    )
    assert "1 dead letter(s) marked handled" in response.content.decode()
    active = active_operator_alerts()
    assert f"alerts_dead_letter_{first.pk}" not in active  # resolved
    assert f"alerts_dead_letter_{second.pk}" in active  # not this one: still waiting for the operator
    first.refresh_from_db()
    assert first.handled_at is not None and first.handled_by == "admin"
    assert services.mark_dead_letters_handled([first], by="someone else") == 0  # handled once
    first.refresh_from_db()
    assert first.handled_by == "admin"
    listing = admin_client.get("/admin/alerts/deadletter/?handled_at__isnull=True").content.decode()
    assert "b:BTCUSDT:1" in listing and "a:BTCUSDT:1" not in listing
