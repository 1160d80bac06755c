"""Admin for notification channels (secrets write-only and masked) and deliveries (read-only).

Found by the admin's autodiscovery. Secret fields are never rendered back: the form shows the masked value
(last 4 characters) and a blank field keeps the stored secret.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from notifications import services
from notifications.models import Delivery, NotificationChannel

_SECRET_FIELDS = {
    "url": "webhook URL (Discord, Slack, generic webhook)",
    "chat_id": "Telegram chat id",
    "address": "email address",
    "secret": "signing secret (generic webhook; blank = generate)",
}


class NotificationChannelForm(forms.ModelForm):
    url = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False))
    chat_id = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False))
    address = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False))
    secret = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False))

    class Meta:
        model = NotificationChannel
        fields = [
            "user",
            "kind",
            "name",
            "enabled",
            "verified",
            "scope",
            "rules",
            "min_severity",
            "watchlist_only",
            "directions",
            "severities",
            "symbols",
            "quiet_start",
            "quiet_end",
            "quiet_action",
            "daily_cap_per_symbol",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        current = self.instance.masked if self.instance.pk else ""
        for name, label in _SECRET_FIELDS.items():
            self.fields[name].label = label
            self.fields[name].help_text = f"stored: {current}; leave blank to keep" if current else ""

    def clean(self):
        data = super().clean()
        kind = data.get("kind")
        given = {name: data.get(name) for name in _SECRET_FIELDS if data.get(name)}
        if kind:
            stored = self.instance.config if self.instance.pk and self.instance.kind == kind else {}
            try:
                self._config = services.clean_channel_config(kind, {**stored, **given})
            except ValueError as error:
                raise forms.ValidationError(str(error)) from None
        return data

    def save(self, commit=True):
        self.instance.set_config(self._config)
        return super().save(commit=commit)


@admin.register(NotificationChannel)
class NotificationChannelAdmin(admin.ModelAdmin):
    form = NotificationChannelForm
    list_display = ["__str__", "user", "kind", "masked", "enabled", "disabled_reason", "last_success_at"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "user__username"]
    readonly_fields = ["masked", "disabled_reason", "last_error", "last_error_at", "last_success_at"]
    actions = ["send_test", "enable"]

    @admin.display(description="secrets")
    def masked(self, obj: NotificationChannel) -> str:
        return obj.masked

    @admin.action(description="Send a test message")
    def send_test(self, request, queryset):
        for channel in queryset:
            result = services.send_test(channel)
            level = messages.SUCCESS if result.ok else messages.ERROR
            self.message_user(request, f"{channel}: {result.detail}", level)

    @admin.action(description="Enable (clear the disabled reason)")
    def enable(self, request, queryset):
        for channel in queryset:
            services.enable_channel(channel)
        self.message_user(request, f"enabled {queryset.count()} channel(s)")


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["id", "alert_id", "channel_id", "user_id", "symbol", "status", "attempts", "sent_at"]
    list_filter = ["status"]
    search_fields = ["symbol"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
