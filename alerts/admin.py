"""Admin for alert rules (validated on save, enable/disable, backtest on stored data), user settings, the
alert history and run_alerts' dead letters (both read-only). Saved rules reach the running engines within ALERTS_RULE_RELOAD_SECONDS."""

from __future__ import annotations

from collections import Counter

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.template.response import TemplateResponse

from alerts import services
from alerts.models import AlertHistory, AlertRule, DeadLetter, UserSettings
from alerts.rule_language import RuleError


class OwnerFilter(admin.SimpleListFilter):
    """Global rules, personal rules, or one user's rules."""

    title = "owner"
    parameter_name = "owner"

    def lookups(self, request, model_admin):
        owners = AlertRule.objects.filter(owner__isnull=False).values_list("owner_id", flat=True).distinct()
        users = get_user_model().objects.filter(pk__in=list(owners)).order_by("username")
        return [
            ("global", "global (no owner)"),
            ("personal", "any user"),
            *((str(u.pk), str(u)) for u in users),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "global":
            return queryset.filter(owner__isnull=True)
        if value == "personal":
            return queryset.filter(owner__isnull=False)
        if value and value.isdigit():
            return queryset.filter(owner_id=int(value))
        return queryset


class AlertRuleAdminForm(forms.ModelForm):
    """The model's own validation (`AlertRule.clean`: expression, slug prefix, personal limits)."""

    class Meta:
        model = AlertRule
        fields = "__all__"
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    form = AlertRuleAdminForm
    list_display = ["slug", "name", "severity", "direction", "mode", "cooldown_seconds", "enabled", "owner"]
    list_filter = ["enabled", OwnerFilter, "mode", "severity"]
    search_fields = ["slug", "name", "expression", "description"]
    readonly_fields = ["created_at", "updated_at"]
    actions = ["enable", "disable", "backtest_on_stored_data"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "description", "expression"]}),
        ("behaviour", {"fields": ["severity", "direction", "mode", "cooldown_seconds", "enabled", "owner"]}),
        ("timestamps", {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.action(description="Enable the selected rules")
    def enable(self, request, queryset):
        count = services.set_enabled(queryset, True)
        self.message_user(request, f"enabled {count} rule(s); the engines pick them up within seconds")

    @admin.action(description="Disable the selected rules")
    def disable(self, request, queryset):
        count = services.set_enabled(queryset, False)
        self.message_user(request, f"disabled {count} rule(s); the engines drop them within seconds")

    @admin.action(description="Backtest on stored data (candles_1m)")
    def backtest_on_stored_data(self, request, queryset):
        from alerts import backtest

        specs, broken = [], []
        for rule in queryset.order_by("slug"):
            try:
                specs.append(rule.spec())
            except RuleError as error:
                broken.append(f"{rule.slug}: {error}")
        for problem in broken:
            self.message_user(request, f"not backtested: {problem}", messages.ERROR)
        jobs = [backtest.SymbolJob(symbol, from_database=True) for symbol in backtest.stored_symbols()]
        alerts = backtest.run_jobs(jobs, specs, processes=1)
        per_rule: dict[str, Counter] = {spec.slug: Counter() for spec in specs}
        for alert in alerts:
            per_rule[alert["rule"]][alert["symbol"]] += 1
        rows = [
            {
                "slug": slug,
                "alerts": sum(counter.values()),
                "symbols": sorted(counter.items(), key=lambda item: (-item[1], item[0])),
            }
            for slug, counter in per_rule.items()
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Backtest on stored data",
            "rows": rows,
            "symbol_count": len(jobs),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/alerts/backtest_result.html", context)


@admin.register(UserSettings)
class UserSettingsAdmin(admin.ModelAdmin):
    list_display = ["user", "timezone", "min_volume_1d", "watchlist_size"]
    search_fields = ["user__username", "user__email"]

    @admin.display(description="watchlist")
    def watchlist_size(self, obj: UserSettings) -> str:
        return f"{len(obj.watchlist)} symbol(s)" if obj.watchlist else "every symbol"


@admin.register(AlertHistory)
class AlertHistoryAdmin(admin.ModelAdmin):
    list_display = [
        "time",
        "rule",
        "symbol",
        "severity",
        "direction",
        "price",
        "late",
        "owner_id",
        "triggered_at",
    ]
    list_filter = ["severity", "direction", "late", "rule"]
    search_fields = ["symbol", "rule"]
    date_hierarchy = "time"
    ordering = ["-time", "-id"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    """What run_alerts gave up on, for an operator to inspect (each raised an operator alert)."""

    list_display = ["created_at", "kind", "key", "subject", "deliveries", "short_reason", "handled_at"]
    list_filter = ["kind", ("handled_at", admin.EmptyFieldListFilter)]
    search_fields = ["key", "subject", "reason"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    readonly_fields = [
        "created_at", "kind", "key", "subject", "deliveries", "reason", "payload", "handled_at", "handled_by"
    ]  # fmt: skip
    actions = ["mark_handled"]

    @admin.action(description="Mark handled (resolves their operator alerts)", permissions=["handle"])
    def mark_handled(self, request, queryset) -> None:
        marked = services.mark_dead_letters_handled(queryset, by=request.user.get_username())
        self.message_user(request, f"{marked} dead letter(s) marked handled; their operator alerts resolved.")

    def has_handle_permission(self, request) -> bool:
        """Marking handled is the one change allowed: for staff who may change dead letters."""
        return request.user.has_perm("alerts.change_deadletter")

    @admin.display(description="reason")
    def short_reason(self, obj: DeadLetter) -> str:
        return obj.reason if len(obj.reason) <= 120 else obj.reason[:119] + "…"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
