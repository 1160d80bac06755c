"""Writes from the dashboard's settings page: watchlist, mutes, volume floor, time zone.

Each write tells the user's open sockets to re-read their settings after the commit
(:func:`gateway.consumers.settings_changed`), so the live feed follows at once without a reload.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from django.db import transaction

from alerts.models import AlertRule, UserSettings

logger = logging.getLogger(__name__)

MAX_WATCHLIST = 1000


def _notify_after_commit(user_id: int) -> None:
    def notify() -> None:
        from gateway.consumers import settings_changed

        try:
            settings_changed(user_id)
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


@transaction.atomic(using="default")
def mute(user, *, kind: str, name: str, hours: float | None, now: datetime | None = None) -> UserSettings:
    """Mute a rule (slug) or a symbol for `hours` (None = until unmuted)."""
    row = _row(user)
    until = None if hours is None else ((now or datetime.now(UTC)) + timedelta(hours=hours)).isoformat()
    field = "muted_rules" if kind == "rule" else "muted_symbols"
    mutes = dict(getattr(row, field) or {})
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


def delete_personal_rule(rule: AlertRule) -> None:
    """Delete one of a user's own rules (callers check ownership; global rules are the admin's)."""
    if rule.owner_id is None:
        raise ValueError("global rules are deleted in the admin")
    rule.delete()
