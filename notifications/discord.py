"""Discord: a channel webhook URL (a secret) receiving `content` up to 2,000 characters."""

from __future__ import annotations

import json

from notifications import safety
from notifications.base import Message, clamp_retry_after, http_failure, retry_after_header
from notifications.crypto import mask

KIND = "discord"
LIMIT = 2000


def clean_config(data: dict) -> dict:
    return {"url": safety.clean_url(data.get("url"))}


def summary(config: dict) -> str:
    return f"webhook {mask(config.get('url'))}"


def send(config: dict, message: Message) -> None:
    body = json.dumps({"content": message.text(LIMIT), "allowed_mentions": {"parse": []}}).encode()
    response = safety.post(config["url"], body, {"Content-Type": "application/json"})
    if 200 <= response.status < 300:
        return
    answer = response.json()
    retry_after = clamp_retry_after(answer.get("retry_after"))
    raise http_failure(
        "Discord",
        response.status,
        str(answer.get("message") or response.text()),
        retry_after if retry_after is not None else retry_after_header(response.headers),
        permanent={401, 403, 404, 410},
    )
