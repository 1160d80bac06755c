"""Generic webhook: the docs/contract.md §5 alert payload (or `{v: 1, alerts: [...]}` for a group), signed.

Headers: `Idempotency-Key` (the first delivery id of the group, stable across retries, so a receiver
can drop the repeat of a send whose answer was lost), `X-Cryptomon-Timestamp` (Unix seconds) and
`X-Cryptomon-Signature: sha256=<hex>`, the HMAC-SHA256 of `<timestamp>.<exact body bytes>` with the
channel's signing secret (the timestamp inside the signature stops replays of an old request).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time

from notifications import safety
from notifications.base import Message, http_failure, retry_after_header
from notifications.crypto import mask

KIND = "webhook"


def clean_config(data: dict) -> dict:
    url = safety.clean_url(data.get("url"))
    secret = str(data.get("secret") or "").strip() or secrets.token_urlsafe(32)
    if len(secret) < 16:
        raise ValueError("the signing secret needs at least 16 characters")
    return {"url": url, "secret": secret}


def summary(config: dict) -> str:
    return f"webhook {mask(config.get('url'))}, secret {mask(config.get('secret'))}"


TOLERANCE_SECONDS = 300  # how old a timestamp a receiver should accept (replays of a captured request)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """`sha256=` + hex HMAC-SHA256 over `<timestamp>.` followed by the exact body bytes."""
    signed = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str, timestamp: str, now: float | None = None) -> bool:
    """What a receiver does (the docs' samples do the same; the tests use it): a fresh timestamp and a
    matching signature, compared in constant time."""
    if not str(timestamp).isdigit() or len(str(timestamp)) > 12:
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    return hmac.compare_digest(sign(secret, body, int(timestamp)), signature)


def send(config: dict, message: Message) -> None:
    body = json.dumps(message.webhook_body(), separators=(",", ":"), ensure_ascii=False).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Cryptomon-Timestamp": str(timestamp),
        "X-Cryptomon-Signature": sign(config.get("secret", ""), body, timestamp),
    }
    if message.idempotency_key:
        headers["Idempotency-Key"] = message.idempotency_key
    response = safety.post(config["url"], body, headers)
    if 200 <= response.status < 300:
        return
    raise http_failure(
        "the webhook",
        response.status,
        response.text(),
        retry_after_header(response.headers),
        permanent={404, 410},
    )
