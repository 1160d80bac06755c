"""Who gets which alert: the owner's visibility, the channel's routing, quiet hours and the daily cap.

Visibility follows DESIGN §10 (the same as the live feed): a personal rule's alert goes to its owner
only; a global rule's alert to every user whose settings show it (watchlist, mutes, minimum 1-day
volume). A user without a settings row sees every global alert.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from alerts.models import AlertHistory, UserSettings
from notifications.models import NotificationChannel


def visible_to(user_id: int, user_settings: UserSettings | None, alert: AlertHistory, now: datetime) -> bool:
    if alert.owner_id is not None:
        return alert.owner_id == user_id
    if user_settings is None:
        return True
    if user_settings.watchlist and alert.symbol not in user_settings.watchlist:
        return False
    if user_settings.is_muted(alert.rule, alert.symbol, now):
        return False
    if user_settings.min_volume_1d is not None:
        volume = (alert.metrics or {}).get("volume_1d")
        if not isinstance(volume, int | float) or volume < user_settings.min_volume_1d:
            return False
    return True


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
