"""Celery tasks for notifications: thin wrappers over the services, operator alerts and the watchdog.

Registered under their `notifications.queue` names (still `alerts.tasks.*`: see that module).
"""

from __future__ import annotations

import logging
import time

from celery import shared_task, signals
from django.conf import settings
from django.db import connections

import cryptomon.celery  # noqa: F401 - the configured app, so .delay() from web/run_alerts uses its broker
from cryptomon import exporter
from notifications import operator, queue, selectors, services, watchdog
from notifications.base import DeliveryError, TransientError
from notifications.models import NotificationChannel

logger = logging.getLogger(__name__)


@shared_task(name=queue.DISPATCH_OUTBOX_ENTRIES, acks_late=True, ignore_result=True)
def dispatch_outbox_entries(outbox_ids: list[int]) -> int:
    """Fan outbox rows out into deliveries (idempotent); returns deliveries created. A row that fails
    is logged and left undispatched, so the stuck-outbox sweep queues it again; the others go on."""
    created = 0
    for outbox_id in outbox_ids:
        try:
            created += services.fan_out(outbox_id).created
        except Exception:
            logger.exception("fan-out of outbox row %s failed; the stuck-outbox sweep retries it", outbox_id)
    return created


# The delivery tasks' Celery time limits (enforced by the prefork pool; flush_channel also keeps the soft
# one itself, so a thread pool gets it too). A send has its own deadline well within them.
DELIVERY_LIMITS = {
    "soft_time_limit": settings.NOTIFICATIONS_TASK_SOFT_TIME_LIMIT_SECONDS,
    "time_limit": settings.NOTIFICATIONS_TASK_TIME_LIMIT_SECONDS,
}


@shared_task(name=queue.FLUSH_CHANNEL, acks_late=True, ignore_result=True, **DELIVERY_LIMITS)
def flush_channel(channel_id: int) -> int:
    """Send a channel's due deliveries as one message; returns alerts delivered."""
    return services.flush_channel(channel_id)


@shared_task(name=queue.REQUEUE_STUCK_NOTIFICATIONS, ignore_result=True)
def requeue_stuck_notifications() -> None:
    services.requeue_stuck()


@shared_task(
    name=queue.SEND_OPERATOR_MESSAGE,
    bind=True,
    acks_late=True,
    ignore_result=True,
    max_retries=None,
    **DELIVERY_LIMITS,
)
def send_operator_message(self, index: int, key: str, state: str, text: str, since: int) -> None:
    try:
        operator.send_to_target(index, key, state, text, since)
    except TransientError as error:
        attempt = self.request.retries + 1
        if attempt >= settings.NOTIFICATIONS_MAX_ATTEMPTS:
            logger.error(
                "operator alert [%s] %s not delivered after %d attempts: %s", key, state, attempt, error
            )
            return
        raise self.retry(countdown=services.retry_delay(attempt, error.retry_after)) from None
    except DeliveryError as error:
        logger.error("operator alert [%s] %s not delivered: %s", key, state, error)


@shared_task(name=queue.CHECK_OPERATOR_CONDITIONS, ignore_result=True)
def check_operator_conditions() -> list[str]:
    """Raise or resolve the operator alerts (feed stale, consumer lag, REST 418/451, forced gaps)."""
    return [condition.key for condition in watchdog.check() if condition.problem]


# --- /metrics of the Celery worker (docs/operations.md "Observe") ---------------------------------------


@signals.worker_init.connect
def _serve_metrics(**kwargs) -> None:
    """In the worker's main process: serve the tasks' and deliveries' metrics that its pool processes write
    (prometheus-client multiprocess mode, PROMETHEUS_MULTIPROC_DIR) and the queue ages, read at scrape time."""
    if not settings.CELERY_METRICS_PORT:
        return
    for kind in NotificationChannel.Kind.values:  # every kind and outcome from the first scrape, at 0
        exporter.NOTIFICATION_SEND_SECONDS.labels(kind)
        for outcome in ("sent", *services.OUTCOMES.values()):
            exporter.NOTIFICATION_DELIVERIES.labels(kind, outcome)
    ages = exporter.ReadingCollector(_queue_ages, exporter.OUTBOX_METRICS)
    exporter.start_thread_exporter(settings.CELERY_METRICS_PORT, settings.METRICS_HOST, [ages])


def _queue_ages() -> dict[str, float]:
    try:
        return selectors.queue_ages()
    finally:
        connections.close_all()  # the exporter's thread keeps no connection between scrapes


_task_started: dict[str, float] = {}


@signals.task_prerun.connect
def _task_prerun(task_id: str, **kwargs) -> None:
    _task_started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _task_postrun(task_id: str, task, state: str | None = None, **kwargs) -> None:
    started = _task_started.pop(task_id, None)
    if started is not None:
        exporter.CELERY_TASK_SECONDS.labels(task.name).observe(time.perf_counter() - started)
    exporter.CELERY_TASKS.labels(task.name, (state or "unknown").lower()).inc()
