"""Web views: health probes and the dashboard pages."""

from __future__ import annotations

import asyncio

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from cryptomon import health


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up (for liveness probes)."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Databases, NATS and Redis are reachable (for readiness probes); 503 names what is not."""
    checks = [health.check_timeseries_database(), health.check_metadata_database(), health.check_redis()]
    checks += asyncio.run(health.check_nats())
    body = {"status": "ok" if all(c.ok for c in checks) else "unavailable"}
    body["checks"] = {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}
    return JsonResponse(body, status=200 if body["status"] == "ok" else 503)


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "gateway/home.html")
