"""Admin for the traded universe (read-only: the collector owns it; docs/contract.md §4)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from collector.models import Symbol


@admin.register(Symbol)
class SymbolAdmin(admin.ModelAdmin):
    list_display = ["symbol", "status", "trading", "contract_type", "history_start", "last_seen", "dashboard"]
    list_filter = ["trading", "status", "contract_type"]
    search_fields = ["symbol", "base_asset"]
    ordering = ["symbol"]
    readonly_fields = [field.name for field in Symbol._meta.fields]

    @admin.display(description="dashboard")
    def dashboard(self, obj: Symbol) -> str:
        return format_html('<a href="{}">chart</a>', reverse("symbol", args=[obj.symbol]))

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
