"""WebSocket routes; the gateway adds `/ws/alerts/` (DESIGN §10)."""

websocket_urlpatterns: list = []
