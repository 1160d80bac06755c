"""Notification channels and deliveries move here from the alerts app: state only.

Their tables (`notification_channels` on `default`, `notification_deliveries` on `timeseries`) were
created by alerts/migrations/0003 and keep their names and rows; this migration and alerts 0004 only
move the models' ownership in Django's state. Content types follow, so admin permissions and log
entries about channels and deliveries stay attached.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models, router

MOVED = ("notificationchannel", "delivery")


def _move_content_types(apps, schema_editor, source: str, target: str) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    alias = schema_editor.connection.alias
    if not router.allow_migrate_model(alias, ContentType):
        return
    types = ContentType.objects.using(alias)
    for model in MOVED:
        if not types.filter(app_label=target, model=model).exists():
            types.filter(app_label=source, model=model).update(app_label=target)


def forwards(apps, schema_editor) -> None:
    _move_content_types(apps, schema_editor, "alerts", "notifications")


def backwards(apps, schema_editor) -> None:
    _move_content_types(apps, schema_editor, "notifications", "alerts")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("alerts", "0003_delivery_notificationchannel"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="Delivery",
                    fields=[
                        ("id", models.BigAutoField(primary_key=True, serialize=False)),
                        ("alert_id", models.BigIntegerField(help_text="alert_history.id")),
                        (
                            "channel_id",
                            models.BigIntegerField(help_text="notification_channels.id (metadata alias)"),
                        ),
                        ("user_id", models.BigIntegerField()),
                        ("symbol", models.TextField()),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("pending", "Pending"),
                                    ("sending", "Sending"),
                                    ("sent", "Sent"),
                                    ("failed", "Failed"),
                                    ("skipped", "Skipped"),
                                ],
                                default="pending",
                                max_length=8,
                            ),
                        ),
                        ("attempts", models.PositiveIntegerField(default=0)),
                        ("next_attempt_at", models.DateTimeField()),
                        ("claimed_at", models.DateTimeField(blank=True, null=True)),
                        ("last_error", models.TextField(blank=True, default="")),
                        ("group_key", models.CharField(blank=True, default="", max_length=40)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("sent_at", models.DateTimeField(blank=True, null=True)),
                    ],
                    options={
                        "verbose_name_plural": "deliveries",
                        "db_table": "notification_deliveries",
                        "indexes": [
                            models.Index(
                                fields=["channel_id", "status", "next_attempt_at"],
                                name="delivery_channel_due",
                            ),
                            models.Index(fields=["status", "next_attempt_at"], name="delivery_status_due"),
                            models.Index(
                                fields=["channel_id", "symbol", "created_at"], name="delivery_channel_symbol"
                            ),
                        ],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("alert_id", "channel_id"), name="delivery_alert_channel"
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="NotificationChannel",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "kind",
                            models.CharField(
                                choices=[
                                    ("telegram", "Telegram"),
                                    ("discord", "Discord webhook"),
                                    ("slack", "Slack incoming webhook"),
                                    ("webhook", "generic webhook"),
                                    ("email", "email"),
                                ],
                                max_length=10,
                            ),
                        ),
                        ("name", models.CharField(blank=True, default="", max_length=80)),
                        (
                            "secret_config",
                            models.TextField(
                                editable=False,
                                help_text="Fernet-encrypted JSON: URL / chat id / address / signing secret",
                            ),
                        ),
                        (
                            "rules",
                            models.JSONField(
                                blank=True, default=list, help_text="rule slugs; empty = every rule"
                            ),
                        ),
                        (
                            "directions",
                            models.JSONField(
                                blank=True, default=list, help_text="bull/bear/neutral; empty = all"
                            ),
                        ),
                        (
                            "severities",
                            models.JSONField(
                                blank=True, default=list, help_text="info/warning/critical; empty = all"
                            ),
                        ),
                        (
                            "symbols",
                            models.JSONField(
                                blank=True, default=list, help_text="symbols; empty = every symbol"
                            ),
                        ),
                        (
                            "quiet_start",
                            models.TimeField(
                                blank=True, help_text="quiet hours start, user's time zone", null=True
                            ),
                        ),
                        (
                            "quiet_end",
                            models.TimeField(
                                blank=True, help_text="quiet hours end (may wrap midnight)", null=True
                            ),
                        ),
                        (
                            "daily_cap_per_symbol",
                            models.PositiveIntegerField(
                                blank=True,
                                help_text="at most this many alerts per symbol per local day; empty = no cap",
                                null=True,
                            ),
                        ),
                        ("enabled", models.BooleanField(default=True)),
                        ("disabled_reason", models.TextField(blank=True, default="")),
                        ("last_error", models.TextField(blank=True, default="")),
                        ("last_error_at", models.DateTimeField(blank=True, null=True)),
                        ("last_success_at", models.DateTimeField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        (
                            "user",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="notification_channels",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "notification_channels",
                        "ordering": ["user_id", "id"],
                        "indexes": [
                            models.Index(fields=["enabled", "user"], name="notif_channels_enabled_user")
                        ],
                    },
                ),
            ],
        ),
        migrations.RunPython(forwards, backwards),
    ]
