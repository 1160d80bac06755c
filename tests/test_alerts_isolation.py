"""No user's rules may delay or stop anybody else's alerts (docs/contract.md §8): run_alerts stores and
publishes the global rules' alerts of a bar in a lane of their own, before and apart from the personal
rules' alerts of the same bar, and acknowledges a bar only once both lanes have stored and published it.

A real alert worker on real NATS JetStream and PostgreSQL. The personal lane is held up for as long as the
test likes by a transaction that has inserted (and not committed) one of the hostile user's alerts: the
lane's insert of the same (rule, symbol, bar) waits on it in PostgreSQL, as it would behind any slow write.
No timing is measured (the latency figure is `benchmarks/bench_alerts.py --latency --hostile 50`)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from asgiref.sync import sync_to_async
from django.db import connections, transaction

from alerts.models import AlertHistory, AlertRule
from cryptomon import messaging
from cryptomon.contract import subjects
from cryptomon.contract.times import from_ms
from cryptomon.workers import OwnThread

from .test_alerts_dead_letters import HOSTILE_RULES, all_acknowledged, hostile_user_with_worst_case_rules
from .test_alerts_engine import MINUTE, T0, bar, history, make_rule, publish_bar, running, until

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)

TS = "timeseries"
SYMBOLS = [f"I{index:02d}USDT" for index in range(20)]
MINUTES = 3


@pytest.fixture
def rules(db, redis_client):
    AlertRule.objects.all().delete()


class HeldAlert:
    """An uncommitted alert_history row in a connection of its own: whoever inserts the same (rule, symbol,
    bar) waits until `release()` rolls it back."""

    def __init__(self) -> None:
        self.thread = OwnThread("held-alert")

    async def hold(self, rule: str, owner_id: int, symbol: str, open_time: int) -> None:
        def insert() -> None:
            transaction.set_autocommit(False, using=TS)
            AlertHistory.objects.using(TS).create(
                rule=rule,
                rule_name="held",
                severity="info",
                direction="neutral",
                symbol=symbol,
                time=from_ms(open_time),
                triggered_at=datetime.now(UTC),
                price=1.0,
                owner_id=owner_id,
            )

        await self.thread(insert)

    async def release(self) -> None:
        def rollback() -> None:
            transaction.rollback(using=TS)
            transaction.set_autocommit(True, using=TS)
            connections[TS].close()

        await self.thread(rollback)
        await self.thread.close()


async def test_global_alerts_are_stored_and_published_while_a_hostile_users_alerts_of_the_same_bars_wait(
    jetstream, rules
):
    nc, js = jetstream
    await sync_to_async(make_rule)("global_pump", "change_5m > 1", cooldown_seconds=0)
    hostile = await hostile_user_with_worst_case_rules()
    published: dict[str, list[str]] = {"global": [], "personal": []}

    async def on_alert(message) -> None:
        payload = messaging.decode(message.data)
        published["global" if payload["owner"] is None else "personal"].append(payload["id"])

    await nc.subscribe("alerts.triggered.>", cb=on_alert)
    held = HeldAlert()
    await held.hold(f"u{hostile}-everything_0", hostile, SYMBOLS[0], T0)  # the personal lane's first insert
    async with running() as worker:
        try:
            for minute in range(MINUTES):
                for symbol in SYMBOLS:
                    await publish_bar(js, bar(symbol, minute, 2.0))
            expected_global = {f"global_pump:{s}:{T0 + m * MINUTE}" for s in SYMBOLS for m in range(MINUTES)}
            # Every bar's global alert is stored and published while every personal alert still waits...
            await until(
                lambda: set(published["global"]) >= expected_global, timeout=60, what="every global alert"
            )
            assert {r.alert_id for r in await history(rule="global_pump")} == expected_global
            assert await history(owner_id=hostile) == []
            assert published["personal"] == []
            # ... and no bar is acknowledged before its personal alerts are stored and published too.
            info = await js.consumer_info(subjects.METRICS_STREAM, worker.durable)
            assert info.num_ack_pending == MINUTES * len(SYMBOLS)
        finally:
            await held.release()  # (before the worker stops: it would wait for the held row for good)
        await until(lambda: all_acknowledged(js, worker), timeout=60, what="every bar acknowledged")
    personal = await history(owner_id=hostile)
    expected_personal = {
        f"u{hostile}-everything_{index}:{s}:{T0 + m * MINUTE}"
        for index in range(HOSTILE_RULES)
        for s in SYMBOLS
        for m in range(MINUTES)
    }  # every rule on every symbol once a minute: the 60 s cooldown, nothing lost
    assert {r.alert_id for r in personal} == expected_personal
    assert set(published["personal"]) == expected_personal
    stream = await js.stream_info(subjects.ALERTS_STREAM)
    assert stream.state.messages == len(expected_global) + len(expected_personal)
