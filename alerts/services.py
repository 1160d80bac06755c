"""Alert writes: recording triggered alerts (history + outbox, one transaction), personal rules, user
settings, and the rule editor's backtest preview (CPU-bound work, so a service rather than a read).

`record_alerts` is the only writer of `alert_history`. It is idempotent and decides from the table
itself (docs/contract.md §8): a rule fires for a symbol at bar t only when no stored alert of that rule and symbol
lies within the cooldown before t or at/after t. The engine's in-memory tracker is a cache in front of
this check; across restarts, shards and overlapping workers the table is the truth.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connections, transaction
from django.db.models import Q

from alerts import signals
from alerts.decisions import RuleLike, RuleSpec, alert_metrics
from alerts.models import (
    DESCRIPTION_MAX,
    NAME_MAX,
    AlertHistory,
    AlertRule,
    DeadLetter,
    OutboxEntry,
    UserSettings,
)
from cryptomon.contract.times import from_ms, to_ms

logger = logging.getLogger(__name__)

TS = "timeseries"

# One statement per chunk of candidate alerts (columns as arrays): the cooldown check and the insert run in
# the database, so a minute's burst costs a round trip, not two per alert. A statement does not see its own
# rows, so a chunk never holds the same (rule, symbol) twice (`_chunks`).
_INSERT = """
INSERT INTO alert_history
    (rule, rule_name, severity, direction, symbol, time, triggered_at, price, description, metrics,
     owner_id, late)
SELECT c.rule, c.rule_name, c.severity, c.direction, c.symbol, c.time, %(triggered_at)s, c.price,
       c.description, c.metrics::jsonb, c.owner_id, c.late
FROM unnest(%(rule)s::text[], %(rule_name)s::text[], %(severity)s::text[], %(direction)s::text[],
            %(symbol)s::text[], %(time)s::timestamptz[], %(price)s::float8[], %(description)s::text[],
            %(metrics)s::text[], %(owner_id)s::bigint[], %(late)s::boolean[], %(blocked_after)s::timestamptz[])
    AS c(rule, rule_name, severity, direction, symbol, time, price, description, metrics, owner_id, late,
         blocked_after)
WHERE NOT EXISTS (
    SELECT 1 FROM alert_history h
    WHERE h.rule = c.rule AND h.symbol = c.symbol AND h.time > c.blocked_after AND h.time <> c.time
)
ON CONFLICT (rule, symbol, time) DO NOTHING
RETURNING id, rule, symbol, time
"""
_COLUMNS = (
    "rule",
    "rule_name",
    "severity",
    "direction",
    "symbol",
    "time",
    "price",
    "description",
    "metrics",
    "owner_id",
    "late",
    "blocked_after",
)


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
    return record_many([(rules, symbol, open_time, price, metrics, late)], triggered_at)[0]


def record_many(bars: Iterable[tuple], triggered_at: datetime | None = None) -> list[Recorded]:
    """`record_alerts` for many bars (`(rules, symbol, open_time, price, metrics, late)` each) in ONE
    transaction and a few statements: a minute's burst of alerts costs one commit and one round trip."""
    triggered_at = triggered_at or datetime.now(UTC)
    bars = [(list(rules), *rest) for rules, *rest in bars]
    candidates = [
        _candidate(rule, symbol, open_time, price, metrics, late)
        for rules, symbol, open_time, price, metrics, late in bars
        for rule in rules
    ]
    with transaction.atomic(using=TS), connections[TS].cursor() as cursor:
        created: dict[tuple[str, str, datetime], int] = {}
        for chunk in _chunks(candidates):
            columns = {name: [row[name] for row in chunk] for name in _COLUMNS}
            cursor.execute(_INSERT, {**columns, "triggered_at": triggered_at})
            created.update({(rule, symbol, time): id_ for id_, rule, symbol, time in cursor.fetchall()})
        late_by_key = {(row["rule"], row["symbol"], row["time"]): row["late"] for row in candidates}
        missed = [row for row in candidates if (row["rule"], row["symbol"], row["time"]) not in created]
        stored = _stored_for_bars(missed)
        notified = [
            OutboxEntry(alert_id=alert_id)
            for key, alert_id in created.items()
            if not late_by_key[key] or settings.ALERTS_NOTIFY_LATE
        ]
        if notified:
            OutboxEntry.objects.using(TS).bulk_create(notified)
            # robust: with the Celery broker down the alert is still published; the notifier's
            # stuck-outbox sweep queues it later
            outbox_ids = [entry.pk for entry in notified]
            transaction.on_commit(
                lambda: signals.outbox_committed.send(sender=OutboxEntry, outbox_ids=outbox_ids),
                using=TS,
                robust=True,
            )
    results: list[Recorded] = []
    counted: set[tuple[str, str, datetime]] = set()  # the same bar twice in one call is created once
    by_bar = iter(candidates)
    for rules, symbol, *_ in bars:
        payloads: list[dict] = []
        blocked: dict[str, int] = {}
        count = 0
        for _ in rules:
            row = next(by_bar)
            key = (row["rule"], symbol, row["time"])
            if key in created:
                count += key not in counted
                counted.add(key)
                alert = AlertHistory(
                    id=created[key],
                    triggered_at=triggered_at,
                    metrics=json.loads(row["metrics"]),
                    **{k: row[k] for k in _COLUMNS if k not in {"blocked_after", "metrics"}},
                )
                payloads.append(alert.to_payload())
            elif key in stored:
                payloads.append(stored[key].to_payload())
            else:
                newest = last_fired(row["rule"], symbol)
                if newest is not None:
                    blocked[row["rule"]] = newest
        results.append(Recorded(payloads=payloads, created=count, blocked=blocked))
    return results


def _candidate(
    rule: RuleLike, symbol: str, open_time: int, price: float, metrics: Mapping[str, Any], late: bool
) -> dict[str, Any]:
    return {
        "rule": rule.slug,
        "rule_name": rule.name[:NAME_MAX],  # bounded whatever the rule holds: the payload must fit NATS
        "severity": rule.severity,
        "direction": rule.direction,
        "symbol": symbol,
        "time": from_ms(open_time),
        "price": price,
        "description": rule.description[:DESCRIPTION_MAX],
        "metrics": json.dumps(alert_metrics(rule, metrics), allow_nan=False),
        "owner_id": rule.owner_id,
        "late": late,
        "blocked_after": from_ms(open_time - max(rule.cooldown_seconds * 1000, 1)),
    }


def _chunks(candidates: list[dict]) -> list[list[dict]]:
    """Consecutive runs in which no (rule, symbol) repeats (a later bar must see the earlier one stored)."""
    chunks: list[list[dict]] = [[]]
    seen: set[tuple[str, str]] = set()
    for row in candidates:
        pair = (row["rule"], row["symbol"])
        if pair in seen:
            chunks.append([])
            seen = set()
        chunks[-1].append(row)
        seen.add(pair)
    return [chunk for chunk in chunks if chunk]


def _stored_for_bars(rows: list[dict]) -> dict[tuple[str, str, datetime], AlertHistory]:
    """Alerts already stored for exactly these (rule, symbol, bar): a redelivery republishes them."""
    if not rows:
        return {}
    query = Q()
    for row in rows:
        query |= Q(rule=row["rule"], symbol=row["symbol"], time=row["time"])
    return {(a.rule, a.symbol, a.time): a for a in AlertHistory.objects.using(TS).filter(query)}


def last_fired(rule: str, symbol: str) -> int | None:
    """Open time (ms) of the newest stored alert of `rule` for `symbol`."""
    newest = (
        AlertHistory.objects.using(TS)
        .filter(rule=rule, symbol=symbol)
        .order_by("-time")
        .values_list("time", flat=True)
        .first()
    )
    return None if newest is None else to_ms(newest)


# --- dead letters (what run_alerts could never deliver) -------------------------------------------------


def dead_letter(
    kind: str, key: str, subject: str, payload: bytes | str, reason: str, deliveries: int = 1
) -> DeadLetter | None:
    """Store what run_alerts gives up on, once per (kind, key): a restart that republishes the same alert
    does not store it twice. After the commit `signals.dead_lettered` tells notifications, which raise an
    operator alert. Returns the new row, or None when it was stored before."""
    if isinstance(payload, bytes):
        payload = payload[: DeadLetter.PAYLOAD_MAX].decode("utf-8", errors="replace")
    letter, created = DeadLetter.objects.get_or_create(
        kind=kind,
        key=key[:300],
        defaults={
            "subject": subject[:300],
            "payload": payload[: DeadLetter.PAYLOAD_MAX].replace("\x00", "\ufffd"),
            "reason": reason[:2000],
            "deliveries": deliveries,
        },
    )
    if not created:
        return None
    summary = f"run_alerts dead-lettered {kind} {key[:200]} on {subject[:200]}: {reason[:300]}"

    def announce() -> None:
        try:
            signals.dead_lettered.send(sender=DeadLetter, dead_letter_id=letter.pk, summary=summary)
        except Exception as error:  # Redis away: the row is the record; the operator finds it in the admin
            logger.warning("dead letter %s stored; operator alert not raised: %s", letter.pk, error)

    transaction.on_commit(announce, using="default")
    return letter


def mark_dead_letters_handled(letters: Iterable[DeadLetter] | Any, by: str) -> int:
    """An operator has dealt with these dead letters (replayed the payload, fixed the cause, or accepted the
    loss): record who and when, and after the commit `signals.dead_letters_handled` tells notifications,
    which resolve their operator alerts. Letters handled before are left as they are. Returns how many
    were marked now."""
    ids = [letter.pk for letter in letters]
    with transaction.atomic(using="default"):
        pending = list(
            DeadLetter.objects.select_for_update()
            .filter(pk__in=ids, handled_at__isnull=True)
            .values_list("pk", flat=True)
        )
        DeadLetter.objects.filter(pk__in=pending).update(handled_at=datetime.now(UTC), handled_by=by[:150])

        def announce() -> None:
            try:
                signals.dead_letters_handled.send(sender=DeadLetter, dead_letter_ids=pending)
            except Exception as error:  # Redis away: the rows say it; the operator alerts stay active
                logger.warning(
                    "dead letters %s marked handled; operator alerts not resolved: %s", pending, error
                )

        if pending:
            transaction.on_commit(announce, using="default")
    return len(pending)


# --- personal rules (the dashboard's editor; the admin goes through AlertRule.clean) -----------------

_NAME_SLUG = re.compile(r"[^a-z0-9_]+")


def personal_slug(owner_id: int, name: str) -> str:
    """`u<owner_id>-<name>` (docs/contract.md §6) with the name reduced to a slug."""
    stem = _NAME_SLUG.sub("_", name.strip().lower()).strip("_") or "rule"
    return f"u{owner_id}-{stem}"[:120]


def _lock_owner(owner_id: int | None) -> None:
    """Lock the owner's user row for the transaction: creates of one user's rules run one after another,
    so the count in `AlertRule.clean` and the insert are atomic (no two requests pass the limit together)."""
    if owner_id is not None:
        get_user_model().objects.select_for_update().filter(pk=owner_id).exists()


@transaction.atomic(using="default")
def create_personal_rule(owner, *, name: str, expression: str, **fields) -> AlertRule:
    """Create one of `owner`'s rules; ValidationError names the problem (expression column, a limit)."""
    _lock_owner(owner.pk)
    rule = AlertRule(
        owner=owner, name=name, expression=expression, slug=personal_slug(owner.pk, name), **fields
    )
    rule.full_clean()
    rule.save()
    return rule


@transaction.atomic(using="default")
def update_rule(rule: AlertRule, **fields) -> AlertRule:
    """Change a rule's fields after validating them; the running engines pick it up within
    ALERTS_RULE_RELOAD_SECONDS (they poll `updated_at`)."""
    unknown = set(fields) - {f.name for f in AlertRule._meta.fields}
    if unknown:
        raise ValidationError(f"unknown rule fields: {', '.join(sorted(unknown))}")
    for name, value in fields.items():
        setattr(rule, name, value)
    _lock_owner(rule.owner_id)
    rule.full_clean()
    rule.save()
    return rule


def delete_personal_rule(rule: AlertRule) -> None:
    """Delete one of a user's own rules (callers check ownership; global rules are the admin's)."""
    if rule.owner_id is None:
        raise ValueError("global rules are deleted in the admin")
    rule.delete()


def set_enabled(rules: Iterable[AlertRule] | Any, enabled: bool) -> int:
    """Enable or disable rules in bulk (admin actions); bumps `updated_at` so engines reload."""
    return AlertRule.objects.filter(pk__in=[r.pk for r in rules]).update(
        enabled=enabled, updated_at=datetime.now(UTC)
    )


# --- user settings (the dashboard's settings page and the live table's star) -----------------------------
#
# Each write announces `alerts.signals.user_settings_changed` after the commit, so the user's open sockets
# re-read their settings and the live feed follows at once without a reload.

MAX_WATCHLIST = 1000


def _notify_after_commit(user_id: int) -> None:
    """Announce the change once it commits (the gateway refreshes the user's open sockets)."""

    def notify() -> None:
        try:
            signals.user_settings_changed.send(sender=UserSettings, user_id=user_id)
        except Exception as error:  # Redis away: sockets pick the change up on their next refresh
            logger.warning("settings of user %s saved; live sockets not told: %s", user_id, error)

    transaction.on_commit(notify, using="default")


def _row(user) -> UserSettings:
    row, _ = UserSettings.objects.select_for_update().get_or_create(user_id=user.pk)
    return row


@transaction.atomic(using="default")
def update_preferences(
    user, *, watchlist: list[str], min_volume_1d: float | None, timezone: str
) -> UserSettings:
    """Replace the watchlist, the minimum 1-day volume and the time zone (validated by the model)."""
    row = _row(user)
    row.watchlist = list(dict.fromkeys(watchlist))[:MAX_WATCHLIST]
    row.min_volume_1d = min_volume_1d
    row.timezone = timezone
    row.full_clean(exclude=["user"])
    row.save()
    _notify_after_commit(user.pk)
    return row


@transaction.atomic(using="default")
def toggle_watchlist(user, symbol: str) -> bool:
    """Star or unstar a symbol; returns whether it is on the watchlist now."""
    row = _row(user)
    watchlist = list(row.watchlist or [])
    if symbol in watchlist:
        watchlist.remove(symbol)
        starred = False
    else:
        if len(watchlist) >= MAX_WATCHLIST:
            raise ValueError(f"the watchlist holds at most {MAX_WATCHLIST} symbols")
        watchlist.append(symbol)
        starred = True
    row.watchlist = watchlist
    row.save(update_fields=["watchlist"])
    _notify_after_commit(user.pk)
    return starred


def _expired(until: Any, now: datetime) -> bool:
    """A stored expiry in the past (unparsable values are kept: visibility hides what it cannot read)."""
    if not isinstance(until, str):
        return False
    try:
        moment = datetime.fromisoformat(until)
    except ValueError:
        return False
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) <= now


@transaction.atomic(using="default")
def mute(user, *, kind: str, name: str, hours: float | None, now: datetime | None = None) -> UserSettings:
    """Mute a rule (slug) or a symbol for `hours` (None = until unmuted).

    Bounded: every socket and page filters by these lists, so each holds at most ALERTS_MAX_MUTES live mutes
    (ValidationError naming `name` beyond). Expired mutes are dropped here and do not count."""
    row = _row(user)
    real_now = datetime.now(UTC)
    until = None if hours is None else ((now or real_now) + timedelta(hours=hours)).isoformat()
    field = "muted_rules" if kind == "rule" else "muted_symbols"
    mutes = {
        key: value for key, value in (getattr(row, field) or {}).items() if not _expired(value, real_now)
    }
    limit = settings.ALERTS_MAX_MUTES
    if name not in mutes and len(mutes) >= limit:
        raise ValidationError({"name": f"at most {limit} muted {kind}s (ALERTS_MAX_MUTES); unmute one first"})
    mutes[name] = until
    setattr(row, field, mutes)
    row.save(update_fields=[field])
    _notify_after_commit(user.pk)
    return row


@transaction.atomic(using="default")
def unmute(user, *, kind: str, name: str) -> None:
    row = _row(user)
    field = "muted_rules" if kind == "rule" else "muted_symbols"
    mutes = dict(getattr(row, field) or {})
    if mutes.pop(name, "absent") != "absent":
        setattr(row, field, mutes)
        row.save(update_fields=[field])
        _notify_after_commit(user.pk)


# --- backtest preview (the rule editor's "what would it have fired") ------------------------------------

PREVIEW_NEWEST = 10
_TRUNCATED_BY = ("symbols", "minutes", "seconds")


@dataclass(frozen=True)
class Preview:
    """What a rule would have fired over stored candles (the backtest engine, docs/contract.md §9), reduced
    as it goes (counts per symbol, the newest few) so memory does not grow with the number of alerts.
    `truncated_by` names each bound that cut the work short: symbols, minutes, seconds."""

    symbols_checked: list[str]
    symbols_stored: int
    by_symbol: dict[str, int]
    newest: list[dict]
    minutes_replayed: int
    truncated_by: list[str]

    def as_json(self) -> dict:
        return {
            "ok": True,
            "symbols_checked": len(self.symbols_checked),
            "symbols_stored": self.symbols_stored,
            "alerts": sum(self.by_symbol.values()),
            "by_symbol": self.by_symbol,
            "newest": [
                {"symbol": a["symbol"], "open_time": a["open_time"], "price": a["price"]} for a in self.newest
            ],
            "minutes_replayed": self.minutes_replayed,
            "truncated": bool(self.truncated_by),
            "truncated_by": self.truncated_by,
            "limits": {
                "symbols": settings.PREVIEW_MAX_SYMBOLS,
                "minutes": settings.PREVIEW_MAX_MINUTES,
                "seconds": settings.PREVIEW_MAX_SECONDS,
            },
        }


def backtest_preview(expression: str, cooldown_seconds: int, symbols: list[str] | None) -> Preview:
    """Replay stored candles through the backtest engine for one rule (RuleError if it does not compile).

    Bounded for a web request (docs/security.md): the given symbols (e.g. the user's watchlist), else the
    stored ones, at most PREVIEW_MAX_SYMBOLS; the newest PREVIEW_MAX_MINUTES candles of each; and no new
    symbol is started once PREVIEW_MAX_SECONDS (wall clock) have passed — the first always is, so one
    symbol's bounded replay is the most a request can overrun. What was computed is returned either way."""
    from alerts import backtest

    spec = RuleSpec.build("preview", expression, cooldown_seconds=cooldown_seconds)
    stored = backtest.stored_symbols()
    known = set(stored)
    wanted = [symbol for symbol in dict.fromkeys(symbols or stored) if symbol in known]
    max_symbols, max_minutes = settings.PREVIEW_MAX_SYMBOLS, settings.PREVIEW_MAX_MINUTES
    truncated = {"symbols"} if len(wanted) > max_symbols else set()
    deadline = time.monotonic() + settings.PREVIEW_MAX_SECONDS
    checked: list[str] = []
    by_symbol: dict[str, int] = {}
    newest: list[dict] = []
    minutes = 0
    for symbol in wanted[:max_symbols]:
        if checked and time.monotonic() >= deadline:
            truncated.add("seconds")
            break
        candles = list(backtest.stored_candles(symbol, newest=max_minutes + 1))
        if len(candles) > max_minutes:
            candles = candles[-max_minutes:]
            truncated.add("minutes")
        alerts = backtest.evaluate(symbol, candles, [spec])
        checked.append(symbol)
        minutes += len(candles)
        if alerts:
            by_symbol[symbol] = len(alerts)
            newest = sorted([*newest, *alerts], key=lambda a: a["open_time"], reverse=True)[:PREVIEW_NEWEST]
    return Preview(
        symbols_checked=checked,
        symbols_stored=len(stored),
        by_symbol=by_symbol,
        newest=newest,
        minutes_replayed=minutes,
        truncated_by=[reason for reason in _TRUNCATED_BY if reason in truncated],
    )
