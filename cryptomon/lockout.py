"""What a locked-out sign-in gets (django-axes' ``AXES_LOCKOUT_CALLABLE``; docs/security.md).

Axes counts failed sign-ins per address and per user name and refuses further attempts, even with the
right password, until the cool-off has passed or an operator runs ``manage.py axes_reset``. The answer is
a 429 with ``Retry-After``: the API's JSON error shape under ``/api/``, plain text elsewhere. It never says
whether the user name exists.
"""

from __future__ import annotations

import math

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


def retry_after_seconds() -> int:
    """The cool-off, the longest a client has to wait (each failure while locked restarts it)."""
    return max(1, math.ceil(settings.AXES_COOLOFF_TIME.total_seconds()))


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict | None = None
) -> HttpResponse:
    retry_after = retry_after_seconds()
    message = f"too many failed sign-ins from this address or for this user; retry in {retry_after} s"
    headers = {"Retry-After": str(retry_after)}
    if request.path.startswith("/api/"):
        error = {"status": 429, "code": "locked_out", "message": message, "parameter": None}
        return JsonResponse({"error": error}, status=429, headers=headers)
    return HttpResponse(message, status=429, headers=headers, content_type="text/plain; charset=utf-8")
