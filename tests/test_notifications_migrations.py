"""Notifications became an app of their own: a database migrated before the move keeps every row.

Real PostgreSQL, both aliases: the database is migrated back to the schema of before the move (channels and
deliveries owned by `alerts`), rows are written through that schema's models, then it is migrated forward.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connections
from django.db.migrations.executor import MigrationExecutor

from alerts.models import AlertHistory, OutboxEntry, UserSettings
from notifications import crypto
from notifications.models import Delivery, NotificationChannel

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)

ALIASES = ("default", "timeseries")
BEFORE_THE_MOVE = [("alerts", "0003_delivery_notificationchannel"), ("notifications", None)]


def migrate(targets: list[tuple[str, str | None]] | None) -> MigrationExecutor:
    """Migrate both aliases to `targets` (None: the newest migrations); returns the last executor."""
    for alias in ALIASES:
        executor = MigrationExecutor(connections[alias])
        executor.migrate(targets or executor.loader.graph.leaf_nodes())
    return executor


@pytest.fixture
def before_the_move():
    """The historical models of the schema before the move; the database is migrated forward afterwards
    even if the test fails, so later tests find today's schema."""
    try:
        executor = migrate(BEFORE_THE_MOVE)
        yield executor.loader.project_state(BEFORE_THE_MOVE[0]).apps
    finally:
        migrate(None)


def test_channels_deliveries_and_the_outbox_survive_the_move_to_the_notifications_app(before_the_move):
    old = before_the_move
    user = old.get_model("auth", "User").objects.create(username="kept")
    old.get_model("alerts", "UserSettings").objects.create(
        user_id=user.pk, watchlist=["BTCUSDT"], timezone="Europe/Paris", channels=[{"kind": "old"}]
    )
    channel = old.get_model("alerts", "NotificationChannel").objects.create(
        user_id=user.pk,
        kind="webhook",
        name="desk",
        secret_config=crypto.encrypt_json({"url": "https://example.com/hook", "secret": "s3cret"}),
        symbols=["BTCUSDT"],
    )
    moment = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    alert = old.get_model("alerts", "AlertHistory").objects.create(
        rule="pump",
        rule_name="Pump",
        severity="info",
        direction="bull",
        symbol="BTCUSDT",
        time=moment,
        triggered_at=moment,
        price=1.0,
    )
    outbox = old.get_model("alerts", "OutboxEntry").objects.create(alert_id=alert.pk)
    delivery = old.get_model("alerts", "Delivery").objects.create(
        alert_id=alert.pk,
        channel_id=channel.pk,
        user_id=user.pk,
        symbol="BTCUSDT",
        status="sent",
        next_attempt_at=moment,
    )

    migrate(None)

    moved = NotificationChannel.objects.get(pk=channel.pk)
    assert (moved.user_id, moved.name, moved.symbols) == (user.pk, "desk", ["BTCUSDT"])
    assert moved.config == {"url": "https://example.com/hook", "secret": "s3cret"}
    sent = Delivery.objects.get(pk=delivery.pk)
    assert (sent.alert_id, sent.channel_id, sent.status) == (alert.pk, channel.pk, Delivery.Status.SENT)
    assert OutboxEntry.objects.get(pk=outbox.pk).alert_id == AlertHistory.objects.get(pk=alert.pk).pk
    settings_row = UserSettings.objects.get(user_id=user.pk)
    assert (settings_row.watchlist, settings_row.timezone) == (["BTCUSDT"], "Europe/Paris")


def test_the_moved_tables_keep_their_names_and_aliases():
    assert (NotificationChannel._meta.db_table, Delivery._meta.db_table) == (
        "notification_channels",
        "notification_deliveries",
    )
    from django.db import router

    assert router.db_for_write(NotificationChannel) == "default"
    assert router.db_for_write(Delivery) == "timeseries"
    with connections["timeseries"].cursor() as cursor:
        cursor.execute("SELECT to_regclass('notification_deliveries') IS NOT NULL")
        assert cursor.fetchone()[0]


def test_the_admins_content_types_follow_the_models():
    from django.contrib.contenttypes.models import ContentType

    assert ContentType.objects.get_for_model(NotificationChannel).app_label == "notifications"
    assert not ContentType.objects.filter(app_label="alerts", model__in=["notificationchannel", "delivery"])
