from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from gateway import api, views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("", views.live, name="home"),
    path("symbols/<str:symbol>/", views.symbol_page, name="symbol"),
    path("history/", views.history, name="history"),
    path("settings/", views.settings_page, name="settings"),
    path("settings/preferences", views.save_preferences, name="save_preferences"),
    path("settings/mutes", views.add_mute, name="add_mute"),
    path("settings/mutes/remove", views.remove_mute, name="remove_mute"),
    path("settings/rules/new", views.rule_edit, name="rule_new"),
    path("settings/rules/check", views.rule_check, name="rule_check"),
    path("settings/rules/preview", views.rule_preview, name="rule_preview"),
    path("settings/rules/<int:rule_id>/", views.rule_edit, name="rule_edit"),
    path("settings/rules/<int:rule_id>/delete", views.rule_delete, name="rule_delete"),
    path("watchlist/toggle", views.toggle_watchlist, name="watchlist_toggle"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/symbols", api.symbols, name="api_symbols"),
    path("api/alerts", api.alerts, name="api_alerts"),
    path("api/candles/<str:symbol>", api.candles, name="api_candles"),
    path("api/metrics/<str:symbol>", api.metrics, name="api_metrics"),
    path("api/chart/<str:symbol>", api.chart, name="api_chart"),
    re_path(r"^api/", api.not_found),
]
