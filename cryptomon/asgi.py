"""ASGI entry point: HTTP through Django, WebSockets through Channels (docs/contract.md §10)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptomon.settings")

from cryptomon.bootstrap import prepare

prepare(["asgi", "runserver"])

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from django.conf import settings  # noqa: E402

from cryptomon import exporter  # noqa: E402
from cryptomon.heap import freeze_long_lived  # noqa: E402
from cryptomon.websocket_routes import websocket_urlpatterns  # noqa: E402
from gateway.flow import FlowControlMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": FlowControlMiddleware(
            AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
    }
)
if settings.WEB_METRICS_PORT:
    exporter.start_thread_exporter(settings.WEB_METRICS_PORT, settings.METRICS_HOST)
freeze_long_lived()  # Django and the routes stay loaded for the process's life: out of every full collection
