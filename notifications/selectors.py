"""Reads about the notification queues: what `/metrics` of the Celery worker reports (docs/operations.md)."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db.models import Count, Min

from alerts.models import OutboxEntry
from notifications.models import Delivery


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
