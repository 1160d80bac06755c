"""What every transport shares: the message to send and the three ways a send can fail."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from django.conf import settings


class DeliveryError(Exception):
    """A send failed; `str(error)` is the exact, secret-free reason shown to the user."""


class TransientError(DeliveryError):
    """Worth retrying later (timeouts, 5xx, rate limits); `retry_after` is the remote's wish, seconds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """The channel itself is dead (bot blocked, chat not found, webhook gone): disable it."""


class RejectedError(DeliveryError):
    """This message was refused (e.g. 400 bad payload); retrying will not help, the channel stays on."""


@dataclass
class Message:
    """One outgoing notification: a group of alerts, a test or an operator alert."""

    kind: str  # "alerts", "test" or "operator"
    title: str
    header: str
    lines: list[str] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)  # docs/contract.md §5 payloads
    event: dict | None = None  # webhook body for "test" / "operator"
    idempotency_key: str = ""

    def text(self, limit: int) -> str:
        """Header plus lines, cut to `limit` characters with a count of what did not fit."""
        out = self.header
        for index, line in enumerate(self.lines):
            after = len(self.lines) - index - 1
            suffix = f"\n… and {after} more" if after else ""
            if len(out) + 1 + len(line) + len(suffix) > limit:
                return (out + f"\n… and {after + 1} more")[:limit]
            out += "\n" + line
        return out[:limit]

    def webhook_body(self) -> dict:
        if self.kind != "alerts":
            return self.event or {"v": 1, "type": self.kind, "message": self.header}
        if len(self.alerts) == 1:
            return self.alerts[0]
        return {"v": 1, "alerts": self.alerts}


def clamp_retry_after(value: object) -> float | None:
    """A remote's retry wish as seconds in [0, NOTIFICATIONS_RETRY_AFTER_MAX_SECONDS], or None when it
    is no number. The remote is not trusted: a wish years ahead (or too large for a float) would park
    the channel's alerts for good or overflow the date arithmetic, so it is cut to the cap."""
    cap = settings.NOTIFICATIONS_RETRY_AFTER_MAX_SECONDS
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond a float's range
        return cap if int(value) > 0 else 0.0
    except ValueError:
        return None
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), cap)


def retry_after_header(headers: dict[str, str]) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), if any, clamped to the cap."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    seconds = clamp_retry_after(value)
    if seconds is not None:
        return seconds
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        return clamp_retry_after((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, OverflowError):
        return None


def http_failure(service: str, status: int, detail: str, retry_after: float | None, permanent: set[int]):
    """The error for a non-2xx answer: permanent statuses disable the channel, 408/425/429/5xx are
    retried, anything else rejects this one message."""
    reason = f"{service} answered {status}" + (f": {detail}" if detail else "")
    if status in permanent:
        return PermanentError(reason)
    if status in {408, 425, 429} or status >= 500:
        return TransientError(reason, retry_after=retry_after)
    if 300 <= status < 400:
        return RejectedError(f"{service} answered {status} (redirects are not followed)")
    return RejectedError(reason)
