from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from cryptomon import health

urlpatterns = [
    path("readyz", health.readyz, name="readyz"),
    # Browsers ask for /favicon.ico on pages that link no icon (the admin's); the base template links it.
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("admin/", admin.site.urls),
    path("", include("gateway.urls")),
]
