"""Which channel takes which alert: the channel's routing, quiet hours and the daily cap.

Whether the channel's owner may see the alert at all is the one visibility rule of the pages and the live
feed, :class:`alerts.visibility.AlertAudience`, applied by `services`.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from alerts.models import AlertHistory, UserSettings
from notifications.models import SEVERITY_ORDER, NotificationChannel


def routes(
    channel: NotificationChannel, alert: AlertHistory, user_settings: UserSettings | None = None
) -> bool:
    """The channel's own filters (an empty list lets everything through): its scope (all visible alerts,
    the owner's own rules, or the rules listed), the minimum severity, the owner's watchlist."""
    if channel.scope == NotificationChannel.Scope.OWN and alert.owner_id != channel.user_id:
        return False
    if channel.scope == NotificationChannel.Scope.RULES and alert.rule not in (channel.rules or ()):
        return False
    if channel.min_severity and _rank(alert.severity) < _rank(channel.min_severity):
        return False
    if channel.watchlist_only and alert.symbol not in (
        (user_settings.watchlist if user_settings else None) or ()
    ):
        return False
    return all(
        not allowed or value in allowed
        for allowed, value in (
            (channel.rules, alert.rule),
            (channel.directions, alert.direction),
            (channel.severities, alert.severity),
            (channel.symbols, alert.symbol),
        )
    )


def _rank(severity: str) -> int:
    return SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else 0


def quiet_hours_end(start: time | None, end: time | None, tz: ZoneInfo, now: datetime) -> datetime:
    """When the quiet window holding `now` ends, as a UTC instant (the digest's release time)."""
    local = now.astimezone(tz)
    candidate = datetime.combine(local.date(), end, tzinfo=tz)
    if candidate <= local:
        candidate = datetime.combine(local.date() + timedelta(days=1), end, tzinfo=tz)
    return candidate.astimezone(UTC)


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def in_quiet_hours(start: time | None, end: time | None, tz: ZoneInfo, now: datetime) -> bool:
    """Whether `now` falls in [start, end) of the local day; a window may wrap midnight (22:00–07:00)."""
    if start is None or end is None or start == end:
        return False
    local = now.astimezone(tz).time().replace(tzinfo=None)
    if start < end:
        return start <= local < end
    return local >= start or local < end


def local_day_start(tz: ZoneInfo, now: datetime) -> datetime:
    """Midnight of the user's current local day, as a UTC instant (for the daily cap)."""
    local = now.astimezone(tz)
    midnight = datetime.combine(local.date(), time(0), tzinfo=tz)
    # A DST change at midnight can make midnight not exist; fold into the next valid hour.
    if midnight.astimezone(UTC).astimezone(tz).date() != local.date():
        midnight += timedelta(hours=1)
    return midnight.astimezone(UTC)
