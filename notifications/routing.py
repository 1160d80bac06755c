"""Which channel takes which alert: the channel's routing, quiet hours and the daily cap.

Whether the channel's owner may see the alert at all is the one visibility rule of the pages and the live
feed, :class:`alerts.visibility.AlertAudience`, applied by `services`.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from alerts.models import AlertHistory
from notifications.models import NotificationChannel


def routes(channel: NotificationChannel, alert: AlertHistory) -> bool:
    """The channel's own filters; an empty list lets everything through."""
    return all(
        not allowed or value in allowed
        for allowed, value in (
            (channel.rules, alert.rule),
            (channel.directions, alert.direction),
            (channel.severities, alert.severity),
            (channel.symbols, alert.symbol),
        )
    )


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
