"""Alert writes: recording triggered alerts (history + outbox, one transaction) and personal rules.

`record_alerts` is the only writer of `alert_history`. It is idempotent and decides from the table
itself (DESIGN §8): a rule fires for a symbol at bar t only when no stored alert of that rule and symbol
lies within the cooldown before t or at/after t. The engine's in-memory tracker is a cache in front of
this check; across restarts, shards and overlapping workers the table is the truth.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections, transaction

from alerts.decisions import RuleLike, alert_metrics
from alerts.models import AlertHistory, AlertRule, OutboxEntry
from alerts.notifications.services import enqueue_after_commit

TS = "timeseries"

_INSERT = """
INSERT INTO alert_history
    (rule, rule_name, severity, direction, symbol, time, triggered_at, price, description, metrics,
     owner_id, late)
SELECT %(rule)s, %(rule_name)s, %(severity)s, %(direction)s, %(symbol)s, %(time)s, %(triggered_at)s,
       %(price)s, %(description)s, %(metrics)s::jsonb, %(owner_id)s, %(late)s
WHERE NOT EXISTS (
    SELECT 1 FROM alert_history
    WHERE rule = %(rule)s AND symbol = %(symbol)s AND time > %(blocked_after)s AND time <> %(time)s
)
ON CONFLICT (rule, symbol, time) DO NOTHING
RETURNING id
"""


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


@dataclass(frozen=True)
class Recorded:
    """What `record_alerts` did: payloads to publish (new and already stored for this very bar) and the
    rules the table refused because of an alert the engine had not seen (rule slug → newest bar)."""

    payloads: list[dict]
    created: int
    blocked: dict[str, int]


def record_alerts(
    rules: Iterable[RuleLike],
    symbol: str,
    open_time: int,
    price: float,
    metrics: Mapping[str, Any],
    late: bool,
    triggered_at: datetime | None = None,
) -> Recorded:
    """Store the alerts of `rules` that fired on one bar, with one outbox row each, in one transaction.

    Returns the §5 payloads to publish after the commit (the caller publishes, then acknowledges). An
    alert already stored for this bar (a redelivery after a crash) is returned again so it is
    republished; JetStream drops the duplicate by its Nats-Msg-Id. Late alerts get no outbox row unless
    ALERTS_NOTIFY_LATE is on: they are stored and shown, not notified.
    """
    with transaction.atomic(using=TS), connections[TS].cursor() as cursor:
        return _record_bar(cursor, rules, symbol, open_time, price, metrics, late, triggered_at)


def record_many(bars: Iterable[tuple], triggered_at: datetime | None = None) -> list[Recorded]:
    """`record_alerts` for many bars (`(rules, symbol, open_time, price, metrics, late)` each) in ONE
    transaction: a minute's burst of alerts costs one commit instead of one per bar."""
    triggered_at = triggered_at or datetime.now(UTC)
    with transaction.atomic(using=TS), connections[TS].cursor() as cursor:
        return [_record_bar(cursor, *bar, triggered_at) for bar in bars]


def _record_bar(
    cursor,
    rules: Iterable[RuleLike],
    symbol: str,
    open_time: int,
    price: float,
    metrics: Mapping[str, Any],
    late: bool,
    triggered_at: datetime | None,
) -> Recorded:
    triggered_at = triggered_at or datetime.now(UTC)
    notify = not late or settings.ALERTS_NOTIFY_LATE
    payloads: list[dict] = []
    blocked: dict[str, int] = {}
    created = 0
    bar = _dt(open_time)
    for rule in rules:
        values = {
            "rule": rule.slug,
            "rule_name": rule.name,
            "severity": rule.severity,
            "direction": rule.direction,
            "symbol": symbol,
            "time": bar,
            "triggered_at": triggered_at,
            "price": price,
            "description": rule.description,
            "metrics": json.dumps(alert_metrics(rule, metrics), allow_nan=False),
            "owner_id": rule.owner_id,
            "late": late,
            "blocked_after": _dt(open_time - max(rule.cooldown_seconds * 1000, 1)),
        }
        cursor.execute(_INSERT, values)
        row = cursor.fetchone()
        if row is not None:
            created += 1
            alert = AlertHistory(
                id=row[0],
                **{k: v for k, v in values.items() if k not in {"blocked_after", "metrics"}},
                metrics=json.loads(values["metrics"]),
            )
            if notify:
                entry = OutboxEntry.objects.using(TS).create(alert_id=alert.id)
                # robust: with the Celery broker down the alert is still published; the notifier's
                # stuck-outbox sweep queues it later
                transaction.on_commit(lambda e=entry: enqueue_after_commit(e), using=TS, robust=True)
            payloads.append(alert.to_payload())
            continue
        existing = AlertHistory.objects.using(TS).filter(rule=rule.slug, symbol=symbol, time=bar).first()
        if existing is not None:
            payloads.append(existing.to_payload())
        else:
            newest = last_fired(rule.slug, symbol)
            if newest is not None:
                blocked[rule.slug] = newest
    return Recorded(payloads=payloads, created=created, blocked=blocked)


def last_fired(rule: str, symbol: str) -> int | None:
    """Open time (ms) of the newest stored alert of `rule` for `symbol`."""
    newest = (
        AlertHistory.objects.using(TS)
        .filter(rule=rule, symbol=symbol)
        .order_by("-time")
        .values_list("time", flat=True)
        .first()
    )
    return None if newest is None else _ms(newest)


# --- personal rules (the dashboard's editor; the admin goes through AlertRule.clean) -----------------

_NAME_SLUG = re.compile(r"[^a-z0-9_]+")


def personal_slug(owner_id: int, name: str) -> str:
    """`u<owner_id>-<name>` (DESIGN §6) with the name reduced to a slug."""
    stem = _NAME_SLUG.sub("_", name.strip().lower()).strip("_") or "rule"
    return f"u{owner_id}-{stem}"[:120]


def create_personal_rule(owner, *, name: str, expression: str, **fields) -> AlertRule:
    """Create one of `owner`'s rules; ValidationError names the problem (expression column, the limit)."""
    rule = AlertRule(
        owner=owner, name=name, expression=expression, slug=personal_slug(owner.pk, name), **fields
    )
    rule.full_clean()
    rule.save()
    return rule


def update_rule(rule: AlertRule, **fields) -> AlertRule:
    """Change a rule's fields after validating them; the running engines pick it up within
    ALERTS_RULE_RELOAD_SECONDS (they poll `updated_at`)."""
    unknown = set(fields) - {f.name for f in AlertRule._meta.fields}
    if unknown:
        raise ValidationError(f"unknown rule fields: {', '.join(sorted(unknown))}")
    for name, value in fields.items():
        setattr(rule, name, value)
    rule.full_clean()
    rule.save()
    return rule


def set_enabled(rules: Iterable[AlertRule] | Any, enabled: bool) -> int:
    """Enable or disable rules in bulk (admin actions); bumps `updated_at` so engines reload."""
    return AlertRule.objects.filter(pk__in=[r.pk for r in rules]).update(
        enabled=enabled, updated_at=datetime.now(UTC)
    )
