"""Notification reads: a user's channels, their deliveries and cap counters (the settings pages), and the
queue ages the Celery worker's `/metrics` reports (docs/operations.md)."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db.models import Count, Min, QuerySet

from alerts.models import OutboxEntry, UserSettings
from notifications import routing
from notifications.models import Delivery, NotificationChannel

RECENT_DELIVERIES = 20


def queue_ages() -> dict[str, float]:
    """The oldest outbox row not yet fanned out and the pending deliveries (count, oldest), in seconds."""
    now = datetime.now(UTC)
    oldest_outbox = OutboxEntry.objects.filter(dispatched_at__isnull=True).aggregate(t=Min("created_at"))["t"]
    pending = Delivery.objects.filter(status=Delivery.Status.PENDING).aggregate(
        n=Count("pk"), t=Min("created_at")
    )
    return {
        "cryptomon_notifications_outbox_age_seconds": _age(now, oldest_outbox),
        "cryptomon_notifications_pending_deliveries": float(pending["n"]),
        "cryptomon_notifications_pending_age_seconds": _age(now, pending["t"]),
    }


def _age(now: datetime, since: datetime | None) -> float:
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0


def channels_of(user) -> QuerySet[NotificationChannel]:
    return NotificationChannel.objects.filter(user_id=user.pk).order_by("id")


def channel_of(user, channel_id: int) -> NotificationChannel | None:
    """One of the user's channels; None for another user's (never reveal which)."""
    return NotificationChannel.objects.filter(user_id=user.pk, pk=channel_id).first()


def recent_deliveries(channel: NotificationChannel) -> list[Delivery]:
    return list(Delivery.objects.filter(channel_id=channel.pk).order_by("-id")[:RECENT_DELIVERIES])


def last_delivery(channel: NotificationChannel) -> Delivery | None:
    return Delivery.objects.filter(channel_id=channel.pk).order_by("-id").first()


def counted_toward_cap(channel: NotificationChannel, tz, now: datetime) -> QuerySet[Delivery]:
    """The channel's deliveries since the owner's local midnight that its daily cap counts (not skipped)."""
    return Delivery.objects.filter(
        channel_id=channel.pk, created_at__gte=routing.local_day_start(tz, now)
    ).exclude(status=Delivery.Status.SKIPPED)


def cap_counters(channel: NotificationChannel, now: datetime | None = None) -> list[tuple[str, int]]:
    """(symbol, alerts counted toward the daily cap today), most first: the page's visible counter."""
    if channel.daily_cap_per_symbol is None:
        return []
    row = UserSettings.objects.filter(user_id=channel.user_id).first()
    tz = routing.zone(row.timezone if row else "UTC")
    counts = (
        counted_toward_cap(channel, tz, now or datetime.now(UTC))
        .values("symbol")
        .annotate(n=Count("id"))
        .order_by("-n", "symbol")
    )
    return [(item["symbol"], item["n"]) for item in counts[:50]]
