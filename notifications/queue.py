"""Queues the notification tasks by their registered names.

Services and the operator module enqueue work here instead of importing `notifications.tasks` (which
imports them), so the app has no import cycle. The names are the wire contract with the broker and
Celery beat: they keep their `alerts.tasks.` prefix from before notifications were an app of their
own, so messages already queued by an older release still find their task after an upgrade.
"""

from __future__ import annotations

DISPATCH_OUTBOX_ENTRIES = "alerts.tasks.dispatch_outbox_entries"
FLUSH_CHANNEL = "alerts.tasks.flush_channel"
REQUEUE_STUCK_NOTIFICATIONS = "alerts.tasks.requeue_stuck_notifications"
SEND_OPERATOR_MESSAGE = "alerts.tasks.send_operator_message"
CHECK_OPERATOR_CONDITIONS = "alerts.tasks.check_operator_conditions"


def _enqueue(name: str, args: tuple, countdown: float | None = None) -> None:
    # The configured app (its broker), imported on first use: web and run_alerts processes load it lazily.
    from cryptomon.celery import app

    # A signature runs the registered task when this process knows it (eager mode included) and falls
    # back to sending by name when it does not.
    app.signature(name, args=args).apply_async(countdown=countdown)


def dispatch_outbox_entries(outbox_ids: list[int]) -> None:
    _enqueue(DISPATCH_OUTBOX_ENTRIES, (outbox_ids,))


def flush_channel(channel_id: int, countdown: float | None = None) -> None:
    _enqueue(FLUSH_CHANNEL, (channel_id,), countdown)


def send_operator_message(index: int, key: str, state: str, text: str, since: int) -> None:
    _enqueue(SEND_OPERATOR_MESSAGE, (index, key, state, text, since))
