"""WebSocket routes; the gateway adds `/ws/alerts/` (docs/contract.md §10)."""

from django.urls import path

from gateway.consumers import AlertsConsumer

websocket_urlpatterns: list = [
    path("ws/alerts/", AlertsConsumer.as_asgi()),
]
