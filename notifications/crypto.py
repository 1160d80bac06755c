"""Encrypting channel secrets (webhook URLs, chat ids, addresses, signing secrets) at rest.

The key is `NOTIFICATIONS_KEY` (one or more comma-separated Fernet keys: the first encrypts, all
decrypt, so keys can be rotated). Only the embedded single-machine default may derive a key from
SECRET_KEY; a configured deployment must set NOTIFICATIONS_KEY so that rotating SECRET_KEY never
makes stored channels unreadable by surprise.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with the configured key(s)."""


@cache
def _fernet(keys: str, secret_key: str, embedded: bool) -> MultiFernet:
    if keys.strip():
        try:
            return MultiFernet([Fernet(key.strip().encode()) for key in keys.split(",") if key.strip()])
        except ValueError:
            raise ImproperlyConfigured(
                "NOTIFICATIONS_KEY must be Fernet keys (32 url-safe base64-encoded bytes, comma-separated)"
            ) from None
    if not embedded:
        raise ImproperlyConfigured("NOTIFICATIONS_KEY is not set (required when DATABASE_URL is configured)")
    derived = hashlib.sha256(b"cryptomon-notifications:" + secret_key.encode()).digest()
    return MultiFernet([Fernet(base64.urlsafe_b64encode(derived))])


def fernet() -> MultiFernet:
    return _fernet(settings.NOTIFICATIONS_KEY, settings.SECRET_KEY, settings.EMBEDDED)


def encrypt_json(value: dict) -> str:
    return fernet().encrypt(json.dumps(value, separators=(",", ":")).encode()).decode()


def decrypt_json(token: str) -> dict:
    if not token:
        return {}
    try:
        return json.loads(fernet().decrypt(token.encode()))
    except InvalidToken:
        raise SecretUnreadable("stored secret cannot be decrypted with NOTIFICATIONS_KEY") from None


def mask(secret: str | None) -> str:
    """`…abcd`: the last 4 characters only (secrets are masked in the admin, the API and logs: docs/security.md)."""
    if not secret:
        return ""
    secret = str(secret)
    return "…" + secret[-4:] if len(secret) > 4 else "…" + "*" * len(secret)
