"""Who may see an alert (docs/contract.md §10): the one rule behind the live feed, the pages, the API and notifications.

- a personal rule's alert (payload ``owner`` set) is shown to its owner only, unfiltered: the user wrote
  the rule for themselves;
- a global rule's alert is shown when its symbol is on the viewer's watchlist (an empty watchlist means
  every symbol), neither its rule nor its symbol is muted (a mute without expiry, or with an expiry still
  in the future), and, when the viewer set a minimum 1-day volume, its ``metrics.volume_1d`` is a number
  of at least that minimum (a missing or non-numeric volume — JSON null, a string, a boolean — is hidden);
- an anonymous viewer (only allowed with ``ALLOW_ANONYMOUS_DASHBOARD``) sees every global alert, unfiltered;
  so does a user without a settings row.

Bad stored values get one behaviour everywhere. An expiry that does not parse as an ISO time counts as a
mute without expiry: the user asked not to see those alerts, the settings page lists the mute so they can
lift it, and refusing to decide (raising) would stop the alert's fan-out for every other user. An expiry
without a time zone is read as UTC.

:class:`AlertAudience` holds one viewer's settings: :meth:`~AlertAudience.is_visible` tests a payload in
memory (live feed, notification routing) and :meth:`~AlertAudience.q` is the same test as a filter on
``alert_history`` (pages, API), so pagination stays correct.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db.models import Func, Q, TextField
from django.db.models.fields.json import KeyTransform
from django.db.models.lookups import Exact

from alerts.models import UserSettings


def mute_expiry(value: Any) -> datetime | None:
    """A stored mute's expiry; None means "until unmuted" (also for a value that does not parse)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def is_volume(value: Any) -> bool:
    """A 1-day volume the minimum can be compared with: a number, and not a boolean (JSON true is not 1)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _mutes(stored: Any) -> dict[str, datetime | None]:
    return {str(key): mute_expiry(until) for key, until in (stored or {}).items()}


@dataclass(frozen=True)
class AlertAudience:
    """What one viewer may see, decided from their settings without touching the database again.

    Build it with :meth:`for_user` (reads ``user_settings``) or :meth:`of` (a row already read); rebuild it
    when settings may have changed.
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
    def of(cls, user_id: int, row: UserSettings | None) -> AlertAudience:
        """The audience of user `user_id` whose settings row is `row` (None: no row, every global alert)."""
        if row is None:
            return cls(user_id=user_id)
        return cls(
            user_id=user_id,
            watchlist=frozenset(str(symbol) for symbol in row.watchlist or ()),
            muted_rules=_mutes(row.muted_rules),
            muted_symbols=_mutes(row.muted_symbols),
            min_volume_1d=row.min_volume_1d,
        )

    @classmethod
    def for_user(cls, user) -> AlertAudience:
        """The audience of a Django user; None or an anonymous user gives the anonymous audience."""
        if user is None or not getattr(user, "is_authenticated", False):
            return cls()
        return cls.of(user.pk, UserSettings.objects.filter(user_id=user.pk).first())

    @staticmethod
    def _active(mutes: dict[str, datetime | None], now: datetime) -> set[str]:
        return {key for key, until in mutes.items() if until is None or until > now}

    def is_muted(self, rule: str | None, symbol: str | None, now: datetime | None = None) -> bool:
        """Whether the rule or the symbol is muted at `now`."""
        now = now or datetime.now(UTC)
        return any(
            key in mutes and (mutes[key] is None or mutes[key] > now)
            for mutes, key in ((self.muted_rules, rule), (self.muted_symbols, symbol))
        )

    def is_visible(self, payload: Mapping[str, Any], now: datetime | None = None) -> bool:
        """May this viewer see this `alerts.triggered` payload (docs/contract.md §5)?"""
        owner = payload.get("owner")
        if owner is not None:
            return self.user_id is not None and owner == self.user_id
        if self.anonymous:
            return True
        symbol = payload.get("symbol")
        if self.watchlist and symbol not in self.watchlist:
            return False
        if self.is_muted(payload.get("rule"), symbol, now):
            return False
        if self.min_volume_1d is not None:
            volume = (payload.get("metrics") or {}).get("volume_1d")
            if not is_volume(volume) or volume < self.min_volume_1d:
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
            # jsonb orders booleans and strings above every number, so the comparison alone would let
            # `true` or "5e9" through: require a JSON number first.
            volume_type = Func(
                KeyTransform("volume_1d", "metrics"), function="jsonb_typeof", output_field=TextField()
            )
            global_alerts &= Q(Exact(volume_type, "number"), metrics__volume_1d__gte=self.min_volume_1d)
        return global_alerts | Q(owner_id=self.user_id)
