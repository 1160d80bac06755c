"""Deleting expired rows in batches on plain PostgreSQL (TimescaleDB's retention policies do it there).

Retention (docs/contract.md §3): candles and metrics 50 hours, never below the 2880-minute warm-up; alert
history 90 days. Batches keep each transaction short so the writers are never blocked for long.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from celery import shared_task
from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)


def _uses_timescaledb_policies(cursor, table: str) -> bool:
    cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    if cursor.fetchone() is None:
        return False
    cursor.execute("SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = %s", [table])
    return cursor.fetchone() is not None


def expiry_cutoffs(now: datetime | None = None) -> dict[str, datetime]:
    now = now or datetime.now(UTC)
    market = now - timedelta(hours=settings.RETENTION_CANDLES_HOURS)
    return {
        "candles_1m": market,
        "metrics_calculated": market,
        "alert_history": now - timedelta(days=settings.RETENTION_ALERTS_DAYS),
    }


def delete_expired(now: datetime | None = None, batch_size: int | None = None) -> dict[str, int]:
    """Delete rows older than their retention; returns rows deleted per table."""
    batch_size = batch_size or settings.RETENTION_BATCH_SIZE
    deleted: dict[str, int] = {}
    with connections["timeseries"].cursor() as cursor:
        for table, cutoff in expiry_cutoffs(now).items():
            deleted[table] = 0
            if _uses_timescaledb_policies(cursor, table):
                continue
            while True:
                cursor.execute(
                    f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE time < %s LIMIT %s))",
                    [cutoff, batch_size],
                )
                deleted[table] += cursor.rowcount
                if cursor.rowcount < batch_size:
                    break
        cursor.execute(
            "DELETE FROM notification_outbox o WHERE NOT EXISTS (SELECT 1 FROM alert_history h WHERE h.id = o.alert_id)"
        )
    if any(deleted.values()):
        logger.info("retention deleted %s", deleted)
    return deleted


@shared_task(name="cryptomon.tasks.delete_expired_rows")
def delete_expired_rows() -> dict[str, int]:
    return delete_expired()
