"""Telegram: `sendMessage` with the bot token from TELEGRAM_BOT_TOKEN and a chat id per channel.

The token sits in the URL path, so errors name only the host and Telegram's own description.
"""

from __future__ import annotations

import json
import re

from django.conf import settings

from notifications import safety
from notifications.base import (
    Message,
    PermanentError,
    RejectedError,
    TransientError,
    clamp_retry_after,
    http_failure,
)
from notifications.crypto import mask

KIND = "telegram"
LIMIT = 4096
_CHAT_ID = re.compile(r"^(-?\d{1,20}|@[A-Za-z][A-Za-z0-9_]{3,31})$")
# 400 descriptions that mean the chat is gone for good (the channel is disabled, not retried).
_DEAD_CHAT = ("chat not found", "user is deactivated", "chat_id is empty", "group chat was deleted")


def clean_config(data: dict) -> dict:
    chat_id = str(data.get("chat_id") or "").strip()
    if not _CHAT_ID.match(chat_id):
        raise ValueError("a Telegram chat id is a number (e.g. 123456789 or -1001234567890) or @channelname")
    return {"chat_id": chat_id}


def summary(config: dict) -> str:
    return f"chat {mask(config.get('chat_id'))}"


def request(method: str, payload: dict, timeout: float | None = None) -> tuple[safety.Response, dict, str]:
    """POST one Bot API method: (response, its JSON answer, the description with the token masked)."""
    token = settings.TELEGRAM_BOT_TOKEN
    if not token:
        raise TransientError("TELEGRAM_BOT_TOKEN is not set on the server")
    url = f"{settings.TELEGRAM_API_URL.rstrip('/')}/bot{token}/{method}"
    try:
        response = safety.post(
            url, json.dumps(payload).encode(), {"Content-Type": "application/json"}, timeout=timeout
        )
    except safety.UnsafeTarget as error:  # TELEGRAM_API_URL is the operator's setting, not the user's
        raise TransientError(f"TELEGRAM_API_URL {error}") from None
    answer = response.json()
    description = str(answer.get("description") or response.text())[:200].replace(token, mask(token))
    return response, answer, description


def call(method: str, payload: dict, timeout: float | None = None):
    """A Bot API method's `result` (the bot's own calls: getUpdates, setWebhook, replies); any refusal is
    a TransientError (with Telegram's `retry_after` on a 429)."""
    response, answer, description = request(method, payload, timeout)
    if 200 <= response.status < 300 and answer.get("ok"):
        return answer.get("result")
    retry_after = (answer.get("parameters") or {}).get("retry_after") if response.status == 429 else None
    raise TransientError(
        f"Telegram answered {response.status} to {method}: {description}",
        retry_after=clamp_retry_after(retry_after),
    )


def send(config: dict, message: Message) -> None:
    payload = {"chat_id": config["chat_id"], "text": message.text(LIMIT), "disable_web_page_preview": True}
    response, answer, description = request("sendMessage", payload)
    if 200 <= response.status < 300 and answer.get("ok", True):
        return
    if response.status == 429:
        retry_after = (answer.get("parameters") or {}).get("retry_after")
        raise TransientError(
            f"Telegram answered 429: {description}",
            retry_after=clamp_retry_after(retry_after),
        )
    if response.status == 403:
        raise PermanentError(f"Telegram answered 403: {description}")
    if response.status == 400:
        if any(marker in description.lower() for marker in _DEAD_CHAT):
            raise PermanentError(f"Telegram answered 400: {description}")
        raise RejectedError(f"Telegram answered 400: {description}")
    if response.status in {401, 404}:  # the server's bot token is wrong: an operator problem, keep retrying
        raise TransientError(f"Telegram refused the bot token ({response.status}): {description}")
    raise http_failure("Telegram", response.status, description, None, permanent=set())
