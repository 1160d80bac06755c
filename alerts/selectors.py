"""Reads: which alerts a viewer may see (DESIGN §10), for the live feed, the JSON API and history pages.

Visibility rules, in one place so the WebSocket feed and the pages never disagree:

- a global rule's alert (payload ``owner`` null) is shown when its symbol is on the viewer's watchlist (an
  empty watchlist means every symbol), neither its rule nor its symbol is muted (a mute without expiry, or
  with an expiry still in the future), and, when the viewer set a minimum 1-day volume, its
  ``metrics.volume_1d`` is known and at least that minimum (an unknown volume is hidden then);
- a personal rule's alert is shown to its owner only, unfiltered: the user wrote the rule for themselves;
- an anonymous viewer (only allowed with ``ALLOW_ANONYMOUS_DASHBOARD``) sees every global alert, unfiltered.

Two ways in: :func:`visible_alerts` / :func:`visible_alerts_queryset` query ``alert_history`` (the
filters run in SQL, so pagination stays correct), and :meth:`AlertAudience.is_visible` is the same test in
memory for live payloads, built once per socket from the user's settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db.models import Q, QuerySet

from alerts.models import AlertHistory, UserSettings
from cryptomon.contract.times import from_ms, to_ms


def _expiry(value: str | None) -> datetime | None:
    """A mute's expiry; None means "until unmuted". Unparseable values count as permanent (fail closed)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class AlertAudience:
    """What one viewer may see, decided from their settings without touching the database again.

    Build it with :meth:`for_user` (reads ``user_settings``); rebuild it when settings may have changed.
    """

    user_id: int | None = None
    watchlist: frozenset[str] = frozenset()
    muted_rules: dict[str, datetime | None] = field(default_factory=dict)
    muted_symbols: dict[str, datetime | None] = field(default_factory=dict)
    min_volume_1d: float | None = None

    @property
    def anonymous(self) -> bool:
        return self.user_id is None

    @classmethod
    def for_user(cls, user) -> AlertAudience:
        """The audience of a Django user; None or an anonymous user gives the anonymous audience."""
        if user is None or not getattr(user, "is_authenticated", False):
            return cls()
        row = UserSettings.objects.filter(user_id=user.pk).first()
        if row is None:
            return cls(user_id=user.pk)
        return cls(
            user_id=user.pk,
            watchlist=frozenset(str(symbol) for symbol in row.watchlist or ()),
            muted_rules={str(k): _expiry(v) for k, v in (row.muted_rules or {}).items()},
            muted_symbols={str(k): _expiry(v) for k, v in (row.muted_symbols or {}).items()},
            min_volume_1d=row.min_volume_1d,
        )

    @staticmethod
    def _active(mutes: dict[str, datetime | None], now: datetime) -> set[str]:
        return {key for key, until in mutes.items() if until is None or until > now}

    def is_visible(self, payload: dict, now: datetime | None = None) -> bool:
        """May this viewer see this `alerts.triggered` payload (DESIGN §5)?"""
        owner = payload.get("owner")
        if owner is not None:
            return self.user_id is not None and owner == self.user_id
        if self.anonymous:
            return True
        symbol = payload.get("symbol")
        if self.watchlist and symbol not in self.watchlist:
            return False
        now = now or datetime.now(UTC)
        if self.muted_rules or self.muted_symbols:
            rule_until = self.muted_rules.get(payload.get("rule"), False)
            if rule_until is not False and (rule_until is None or rule_until > now):
                return False
            symbol_until = self.muted_symbols.get(symbol, False)
            if symbol_until is not False and (symbol_until is None or symbol_until > now):
                return False
        if self.min_volume_1d is not None:
            volume = (payload.get("metrics") or {}).get("volume_1d")
            if not isinstance(volume, int | float) or isinstance(volume, bool) or volume < self.min_volume_1d:
                return False
        return True

    def q(self, now: datetime | None = None) -> Q:
        """The same test as a filter on ``alert_history``."""
        global_alerts = Q(owner_id__isnull=True)
        if self.anonymous:
            return global_alerts
        now = now or datetime.now(UTC)
        if self.watchlist:
            global_alerts &= Q(symbol__in=sorted(self.watchlist))
        if rules := self._active(self.muted_rules, now):
            global_alerts &= ~Q(rule__in=sorted(rules))
        if symbols := self._active(self.muted_symbols, now):
            global_alerts &= ~Q(symbol__in=sorted(symbols))
        if self.min_volume_1d is not None:
            # jsonb comparison: JSON null and a missing key never pass, numbers compare numerically.
            global_alerts &= Q(metrics__volume_1d__gte=self.min_volume_1d)
        return global_alerts | Q(owner_id=self.user_id)


def audience_of(viewer) -> AlertAudience:
    """Accept either an :class:`AlertAudience` or a user (anonymous or None included)."""
    return viewer if isinstance(viewer, AlertAudience) else AlertAudience.for_user(viewer)


def _since(value: datetime | int | float | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return from_ms(value)  # epoch milliseconds, as on the wire


def visible_alerts_queryset(
    viewer,
    symbols: Iterable[str] | None = None,
    rules: Iterable[str] | None = None,
    since: datetime | int | None = None,
) -> QuerySet[AlertHistory]:
    """Every alert the viewer may see, newest bar first (ties: newest row first); not sliced, so pages
    can paginate it. ``symbols``/``rules``: None = all, an empty list = none. ``since``: a datetime or epoch
    milliseconds, compared with the bar's open time."""
    audience = audience_of(viewer)
    queryset = AlertHistory.objects.filter(audience.q())
    if symbols is not None:
        queryset = queryset.filter(symbol__in=list(symbols))
    if rules is not None:
        queryset = queryset.filter(rule__in=list(rules))
    if (moment := _since(since)) is not None:
        queryset = queryset.filter(time__gte=moment)
    return queryset.order_by("-time", "-id")


def visible_alerts(
    viewer,
    symbols: Iterable[str] | None = None,
    rules: Iterable[str] | None = None,
    since: datetime | int | None = None,
    limit: int = 100,
) -> list[dict]:
    """The newest ``limit`` visible alerts as DESIGN §5 payloads, newest first (the §10 snapshot)."""
    symbols = None if symbols is None else list(symbols)
    rules = None if rules is None else list(rules)
    if symbols == [] or rules == [] or limit <= 0:
        return []
    rows = visible_alerts_queryset(viewer, symbols, rules, since)[:limit]
    return [row.to_payload() for row in rows]


# --- reads of the alert engine (alerts/engine.py) ------------------------------------------------------


def enabled_rules() -> list:
    """Every enabled rule (global and personal), as stored; the engine compiles them."""
    from alerts.models import AlertRule

    return list(AlertRule.objects.filter(enabled=True).order_by("slug"))


def rules_version() -> tuple:
    """Changes whenever a rule is created, edited, enabled, disabled or deleted: the engine polls it."""
    from django.db.models import Count, Max

    from alerts.models import AlertRule

    row = AlertRule.objects.aggregate(newest=Max("updated_at"), count=Count("id"))
    return (row["newest"], row["count"])


def last_fired_marks() -> list[tuple[str, str, int]]:
    """(rule, symbol, open time ms of its newest alert) for every pair in `alert_history`: the cooldown
    state the engine rebuilds on start (DESIGN §8)."""
    from django.db import connections

    with connections["timeseries"].cursor() as cursor:
        cursor.execute("SELECT rule, symbol, max(time) FROM alert_history GROUP BY rule, symbol")
        return [(rule, symbol, to_ms(time)) for rule, symbol, time in cursor.fetchall()]


def alerts_triggered_since(moment: datetime) -> list[dict]:
    """§5 payloads of the alerts stored since `moment` (wall clock), oldest first: republished on start in
    case a crash came between the commit and the publish (JetStream drops what it already has)."""
    rows = AlertHistory.objects.filter(triggered_at__gte=moment).order_by("triggered_at", "id")
    return [row.to_payload() for row in rows]


def trading_symbols() -> list[str]:
    """The universe as the collector last saw it (shards filter their consumers on it)."""
    from collector.models import Symbol

    return list(Symbol.objects.filter(trading=True).values_list("symbol", flat=True))
