"""Notification channels (metadata alias) and deliveries (time-series alias).

Channels are a model of their own (one row per channel, not JSON on the user's settings): their secrets are
encrypted at rest (`crypto`) and they carry delivery state (disabled reason, last error, last
success) that the admin shows. Deliveries live beside `alert_history` and the outbox on the
time-series alias and keep channel and user ids as plain integers (no FK crosses aliases, docs/contract.md §3).
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models

from notifications import crypto

__all__ = ["Delivery", "NotificationChannel", "TelegramLinkToken"]

SEVERITY_ORDER = ("info", "warning", "critical")


def digest_of(value: str) -> str:
    """SHA-256 hex of a value kept only encrypted (a chat id, an address) or not at all (a link token):
    what lookups compare."""
    return hashlib.sha256(str(value).encode()).hexdigest()


class NotificationChannel(models.Model):
    """Where one user's alerts go, and which of them (routing)."""

    class Kind(models.TextChoices):
        TELEGRAM = "telegram", "Telegram"
        DISCORD = "discord", "Discord webhook"
        SLACK = "slack", "Slack incoming webhook"
        WEBHOOK = "webhook", "generic webhook"
        EMAIL = "email", "email"

    class Scope(models.TextChoices):
        ALL = "all", "all my visible alerts"
        OWN = "own", "only my own rules"
        RULES = "rules", "only these rules"

    class QuietAction(models.TextChoices):
        HOLD = "hold", "hold them and send one digest when quiet hours end"
        DROP = "drop", "drop them"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_channels"
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    name = models.CharField(max_length=80, blank=True, default="")
    secret_config = models.TextField(
        editable=False, help_text="Fernet-encrypted JSON: URL / chat id / address / signing secret"
    )
    address_digest = models.CharField(
        max_length=64,
        blank=True,
        default="",
        db_index=True,
        help_text="SHA-256 of the chat id or address (lookups)",
    )
    verified = models.BooleanField(default=True, help_text="false for an email address not yet confirmed")
    scope = models.CharField(max_length=5, choices=Scope.choices, default=Scope.ALL)
    min_severity = models.CharField(max_length=8, blank=True, default="", help_text="empty = every severity")
    watchlist_only = models.BooleanField(default=False, help_text="only symbols on the owner's watchlist")
    quiet_action = models.CharField(max_length=4, choices=QuietAction.choices, default=QuietAction.DROP)
    rules = models.JSONField(default=list, blank=True, help_text="rule slugs; empty = every rule")
    directions = models.JSONField(default=list, blank=True, help_text="bull/bear/neutral; empty = all")
    severities = models.JSONField(default=list, blank=True, help_text="info/warning/critical; empty = all")
    symbols = models.JSONField(default=list, blank=True, help_text="symbols; empty = every symbol")
    quiet_start = models.TimeField(null=True, blank=True, help_text="quiet hours start, user's time zone")
    quiet_end = models.TimeField(null=True, blank=True, help_text="quiet hours end (may wrap midnight)")
    daily_cap_per_symbol = models.PositiveIntegerField(
        null=True, blank=True, help_text="at most this many alerts per symbol per local day; empty = no cap"
    )
    enabled = models.BooleanField(default=True)
    disabled_reason = models.TextField(blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "notification_channels"
        ordering = ["user_id", "id"]
        indexes = [models.Index(fields=["enabled", "user"], name="notif_channels_enabled_user")]

    def __str__(self) -> str:
        return self.name or f"{self.get_kind_display()} #{self.pk}"

    @property
    def config(self) -> dict:
        """The decrypted secrets; never log or render this."""
        cache = getattr(self, "_config_cache", None)
        if cache is None or cache[0] != self.secret_config:
            cache = (self.secret_config, crypto.decrypt_json(self.secret_config))
            self._config_cache = cache
        return dict(cache[1])

    def set_config(self, value: dict) -> None:
        self.secret_config = crypto.encrypt_json(value)
        self._config_cache = (self.secret_config, dict(value))
        # /stop finds a chat's channels, a confirmation link its address, by this digest.
        key = value.get("chat_id") or value.get("address")
        self.address_digest = digest_of(key) if key else ""

    @property
    def masked(self) -> str:
        """The secrets as shown in the admin, the API and logs (last 4 characters)."""
        from notifications.transports import transport

        try:
            return transport(self.kind).summary(self.config)
        except crypto.SecretUnreadable:
            return "unreadable (wrong NOTIFICATIONS_KEY)"

    def log_name(self) -> str:
        return f"channel {self.pk} ({self.kind} {self.masked})"


class TelegramLinkToken(models.Model):
    """A one-time `/start` token of the "Connect Telegram" deep link: only its SHA-256 is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "notification_telegram_link_tokens"

    def __str__(self) -> str:
        return f"telegram link of user {self.user_id}"


class Delivery(models.Model):
    """One alert to one channel: unique per (alert, channel), so fan-out can run any number of times."""

    class Status(models.TextChoices):
        PENDING = "pending"  # waiting for its group window or its next retry
        SENDING = "sending"  # claimed by a worker (re-queued if that worker dies)
        SENT = "sent"
        FAILED = "failed"  # gave up: rejected, permanent error or out of attempts
        SKIPPED = "skipped"  # quiet hours or daily cap (kept so fan-out stays idempotent)
        HELD = "held"  # quiet hours with "hold": released as one digest at next_attempt_at (their end)

    id = models.BigAutoField(primary_key=True)
    alert_id = models.BigIntegerField(help_text="alert_history.id")
    channel_id = models.BigIntegerField(help_text="notification_channels.id (metadata alias)")
    user_id = models.BigIntegerField()
    symbol = models.TextField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    group_key = models.CharField(max_length=40, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "notification_deliveries"
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["alert_id", "channel_id"], name="delivery_alert_channel")
        ]
        indexes = [
            models.Index(fields=["channel_id", "status", "next_attempt_at"], name="delivery_channel_due"),
            models.Index(fields=["status", "next_attempt_at"], name="delivery_status_due"),
            models.Index(fields=["channel_id", "symbol", "created_at"], name="delivery_channel_symbol"),
        ]

    def __str__(self) -> str:
        return f"alert {self.alert_id} → channel {self.channel_id}: {self.status}"
