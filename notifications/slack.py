"""Slack: an incoming-webhook URL (a secret) receiving `text`."""

from __future__ import annotations

import json

from notifications import safety
from notifications.base import Message, http_failure, retry_after_header
from notifications.crypto import mask

KIND = "slack"
LIMIT = 3900


def clean_config(data: dict) -> dict:
    return {"url": safety.clean_url(data.get("url"))}


def summary(config: dict) -> str:
    return f"webhook {mask(config.get('url'))}"


def send(config: dict, message: Message) -> None:
    body = json.dumps({"text": message.text(LIMIT)}).encode()
    response = safety.post(config["url"], body, {"Content-Type": "application/json"})
    if 200 <= response.status < 300:
        return
    # 403 invalid_token/action_prohibited, 404 no_service/channel_not_found, 410 channel_is_archived
    raise http_failure(
        "Slack",
        response.status,
        response.text(),
        retry_after_header(response.headers),
        permanent={403, 404, 410},
    )
