"""Rules and user settings (metadata alias) and alert history with its outbox (timeseries alias).

No foreign key crosses the two aliases (docs/contract.md §3): history rows keep rule slugs and user ids as
plain values.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from cryptomon.contract import messages
from cryptomon.contract.times import to_ms

# docs/contract.md §8: every alert copies the name and description into its row and NATS message, so both are
# bounded; a personal rule may not fire a symbol more than once a minute.
NAME_MAX = 120
DESCRIPTION_MAX = 500
PERSONAL_MIN_COOLDOWN_SECONDS = 60


class AlertRule(models.Model):
    class Severity(models.TextChoices):
        INFO = "info"
        WARNING = "warning"
        CRITICAL = "critical"

    class Direction(models.TextChoices):
        BULL = "bull"
        BEAR = "bear"
        NEUTRAL = "neutral"

    class Mode(models.TextChoices):
        BAR_CLOSE = "bar_close", "on bar close"
        INTRABAR = "intrabar", "intrabar"

    slug = models.SlugField(
        max_length=120, unique=True, help_text="global rules: any slug; personal: u<owner>-<name>"
    )
    name = models.CharField(max_length=NAME_MAX)
    description = models.CharField(max_length=DESCRIPTION_MAX, blank=True, default="")
    expression = models.TextField(
        help_text="docs/contract.md §8 rule language, e.g. change_1h > 2 and volume_1h > 1_000_000"
    )
    severity = models.CharField(max_length=8, choices=Severity.choices, default=Severity.INFO)
    direction = models.CharField(max_length=8, choices=Direction.choices, default=Direction.NEUTRAL)
    mode = models.CharField(max_length=9, choices=Mode.choices, default=Mode.BAR_CLOSE)
    cooldown_seconds = models.PositiveIntegerField(default=300)
    enabled = models.BooleanField(default=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="alert_rules"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "alert_rules"
        ordering = ["slug"]
        indexes = [models.Index(fields=["enabled", "owner"], name="alert_rules_enabled_owner")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(owner__isnull=True)
                | models.Q(cooldown_seconds__gte=PERSONAL_MIN_COOLDOWN_SECONDS),
                name="alert_rules_personal_cooldown",
                violation_error_message=(
                    f"a personal rule's cooldown is at least {PERSONAL_MIN_COOLDOWN_SECONDS} seconds"
                ),
            )
        ]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_global(self) -> bool:
        return self.owner_id is None

    def spec(self):
        """The compiled, framework-free form the engine, the backtest and the admin evaluate
        (raises RuleError when the stored expression does not compile)."""
        from alerts.decisions import RuleSpec

        return RuleSpec.of(self)

    def clean(self) -> None:
        """The expression compiles; a personal rule has its owner's slug prefix, a cooldown of at least
        PERSONAL_MIN_COOLDOWN_SECONDS and fits its owner's ALERTS_MAX_PERSONAL_RULES (counted here; the
        services lock the owner's row so that concurrent creates cannot both pass the count)."""
        from alerts.rule_language import RuleError, compile_rule

        errors: dict[str, str] = {}
        try:
            compile_rule(self.expression)
        except RuleError as error:
            errors["expression"] = str(error)
        if self.owner_id is not None:
            if not self.slug.startswith(f"u{self.owner_id}-"):
                errors["slug"] = f"a personal rule's slug starts with u{self.owner_id}-"
            if self.cooldown_seconds is not None and self.cooldown_seconds < PERSONAL_MIN_COOLDOWN_SECONDS:
                errors["cooldown_seconds"] = (
                    f"a personal rule's cooldown is at least {PERSONAL_MIN_COOLDOWN_SECONDS} seconds"
                )
        if errors:
            raise ValidationError(errors)
        if self.owner_id is not None:
            limit = settings.ALERTS_MAX_PERSONAL_RULES
            others = AlertRule.objects.filter(owner_id=self.owner_id).exclude(pk=self.pk).count()
            if others >= limit:
                raise ValidationError(
                    f"a user may have at most {limit} personal rules (this user has {others})"
                )


class UserSettings(models.Model):
    """One row per user: what they want to see and where alerts go (docs/contract.md §6)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="alert_settings"
    )
    watchlist = models.JSONField(default=list, blank=True, help_text="symbols; empty = every symbol")
    muted_rules = models.JSONField(
        default=dict, blank=True, help_text="rule slug → expiry (ISO time) or null"
    )
    muted_symbols = models.JSONField(default=dict, blank=True, help_text="symbol → expiry (ISO time) or null")
    min_volume_1d = models.FloatField(
        null=True, blank=True, help_text="hide global alerts below this 1-day USDT volume"
    )
    timezone = models.CharField(max_length=64, default="UTC")

    class Meta:
        db_table = "user_settings"
        verbose_name_plural = "user settings"

    def __str__(self) -> str:
        return f"settings of {self.user}"

    def clean(self) -> None:
        from zoneinfo import available_timezones

        if self.timezone not in available_timezones():
            raise ValidationError(
                {"timezone": f"unknown time zone {self.timezone!r} (use an IANA name like Europe/Paris)"}
            )


class AlertHistory(models.Model):
    """One triggered alert: unique per (rule, symbol, bar); the docs/contract.md §5 payload in columns."""

    id = models.BigAutoField(primary_key=True)
    rule = models.TextField()
    rule_name = models.TextField()
    severity = models.CharField(max_length=8)
    direction = models.CharField(max_length=8)
    symbol = models.TextField()
    time = models.DateTimeField(help_text="open time of the bar")
    triggered_at = models.DateTimeField()
    price = models.FloatField()
    description = models.TextField(blank=True, default="")
    metrics = models.JSONField(default=dict)
    owner_id = models.BigIntegerField(null=True, blank=True)
    late = models.BooleanField(default=False)

    class Meta:
        db_table = "alert_history"
        verbose_name_plural = "alert history"
        constraints = [
            models.UniqueConstraint(fields=["rule", "symbol", "time"], name="alert_history_rule_symbol_time")
        ]
        indexes = [
            models.Index(fields=["-time"], name="alert_history_time"),
            models.Index(fields=["symbol", "-time"], name="alert_history_symbol_time"),
            models.Index(fields=["owner_id", "-time"], name="alert_history_owner_time"),
        ]

    def __str__(self) -> str:
        return self.alert_id

    @property
    def open_time(self) -> int:
        return to_ms(self.time)

    @property
    def alert_id(self) -> str:
        return messages.alert_id(self.rule, self.symbol, self.open_time)

    def to_payload(self) -> dict:
        """The `alerts.triggered` payload of docs/contract.md §5."""
        return {
            "v": 1,
            "id": self.alert_id,
            "rule": self.rule,
            "rule_name": self.rule_name,
            "severity": self.severity,
            "direction": self.direction,
            "symbol": self.symbol,
            "open_time": self.open_time,
            "triggered_at": to_ms(self.triggered_at),
            "price": self.price,
            "description": self.description,
            "metrics": self.metrics,
            "owner": self.owner_id,
            "late": self.late,
        }


class OutboxEntry(models.Model):
    """A notification waiting to be delivered; written in the alert's transaction (docs/contract.md §6)."""

    id = models.BigAutoField(primary_key=True)
    alert_id = models.BigIntegerField(unique=True, help_text="alert_history.id")
    created_at = models.DateTimeField(auto_now_add=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "notification_outbox"
        indexes = [models.Index(fields=["dispatched_at", "created_at"], name="outbox_pending")]


class DeadLetter(models.Model):
    """Something run_alerts could never deliver (docs/alerts.md "Failures"): an alert JetStream refused for
    good, or a bar that failed ALERTS_MAX_DELIVERIES times. Kept for an operator to inspect instead of being
    retried forever; each one raised an operator alert when stored."""

    class Kind(models.TextChoices):
        ALERT = "alert", "alert (alerts.triggered, not published)"
        MESSAGE = "message", "message (metrics.calculated, not handled)"

    PAYLOAD_MAX = 1024 * 1024  # what is kept of a payload (a refused one may be larger)

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    key = models.CharField(max_length=300, help_text="the alert's id, or STREAM:sequence of the message")
    subject = models.CharField(max_length=300)
    payload = models.TextField(help_text="as sent or received (cut at 1 MiB)")
    reason = models.TextField()
    deliveries = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    handled_at = models.DateTimeField(null=True, blank=True, help_text="when an operator marked it handled")
    handled_by = models.CharField(max_length=150, blank=True, default="", help_text="who marked it handled")

    class Meta:
        db_table = "alert_dead_letters"
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["kind", "key"], name="alert_dead_letters_kind_key")]

    def __str__(self) -> str:
        return f"{self.kind} {self.key}"
