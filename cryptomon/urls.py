from django.contrib import admin
from django.urls import include, path

from cryptomon import health

urlpatterns = [
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("", include("gateway.urls")),
]
