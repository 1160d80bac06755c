"""Sends the time-series models to the `timeseries` alias (docs/contract.md §3)."""

from __future__ import annotations

from django.conf import settings

TIMESERIES_MODELS = frozenset(
    {
        "metrics.candle",  # StoredCandle before its rename (historical migrations)
        "metrics.storedcandle",
        "metrics.metricbar",
        "alerts.alerthistory",
        "alerts.outboxentry",
        "notifications.delivery",
        # Delivery was created under the alerts label (alerts/migrations/0003); that migration must keep
        # putting its table on the time-series alias when a fresh database is built.
        "alerts.delivery",
        "collector.symbol",
    }
)


def is_timeseries(app_label: str, model_name: str | None) -> bool:
    return f"{app_label}.{(model_name or '').lower()}" in TIMESERIES_MODELS


class TimeseriesRouter:
    """Candles, metrics, alert history and the outbox live on `timeseries`; everything else on `default`.

    When both aliases name one database, every table is migrated once through `default` (they share
    django_migrations, so migrating through both would skip the second)."""

    def _alias(self, model) -> str:
        return "timeseries" if is_timeseries(model._meta.app_label, model._meta.model_name) else "default"

    def db_for_read(self, model, **hints):
        return self._alias(model)

    def db_for_write(self, model, **hints):
        return self._alias(model)

    def allow_relation(self, obj1, obj2, **hints):
        # __class__, not type(): request.user is a lazy proxy whose type() is SimpleLazyObject
        return self._alias(obj1.__class__) == self._alias(obj2.__class__)

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if hints.get("timeseries_only"):
            return db == ("default" if settings.TIMESERIES_SHARED else "timeseries")
        if model_name is None:
            return None
        if settings.TIMESERIES_SHARED:
            return db == "default"
        return db == ("timeseries" if is_timeseries(app_label, model_name) else "default")
