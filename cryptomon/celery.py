"""The Celery app: notification delivery and periodic housekeeping (retention)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptomon.settings")

from cryptomon.bootstrap import prepare

prepare(["celery", "worker"])

from django.conf import settings  # noqa: E402

app = Celery("cryptomon")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.imports = ["cryptomon.retention"]
app.conf.beat_schedule_filename = str(settings.VAR_DIR / "celerybeat-schedule")
app.autodiscover_tasks()
app.conf.beat_schedule = {
    "delete-expired-rows": {"task": "cryptomon.tasks.delete_expired_rows", "schedule": 600.0},
    "requeue-stuck-notifications": {
        "task": "alerts.tasks.requeue_stuck_notifications",
        "schedule": settings.NOTIFICATIONS_REQUEUE_INTERVAL_SECONDS,
    },
    "check-operator-conditions": {
        "task": "alerts.tasks.check_operator_conditions",
        "schedule": settings.OPERATOR_CHECK_SECONDS,
        "options": {"expires": settings.OPERATOR_CHECK_SECONDS},  # no pile-up behind a slow check
    },
}
