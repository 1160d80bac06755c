"""The Telegram bot's side of "Connect Telegram": what it does with an update, and how updates arrive.

A user presses Connect Telegram, opens `https://t.me/<bot>?start=<token>` and presses Start; Telegram
sends the bot the update `/start <token>`. `handle_update` binds that chat to the token's user and
replies "connected"; `/stop` switches the chat's channels off. Updates arrive one of two ways
(docs/notifications.md): Telegram POSTs them to the webhook view (`TELEGRAM_WEBHOOK_URL`, registered
with `setWebhook` and its secret token), or, with no public URL, `TelegramPoller` long-polls
`getUpdates` (the `run_telegram_bot` command, started by run_monitor).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging

from django.conf import settings

from cryptomon.workers import Worker, in_thread
from notifications import services, telegram
from notifications.base import TransientError

logger = logging.getLogger(__name__)

CONNECTED = (
    "✅ connected: cryptomon alerts will arrive in this chat. "
    "Choose which ones in Settings → Notifications. Send /stop to disconnect."
)
LINK_REFUSED = (
    "This link has expired or was already used. In cryptomon, open Settings → Notifications and press "
    "Connect Telegram again."
)
HELLO = (
    "To receive cryptomon alerts here, open Settings → Notifications in cryptomon and press Connect Telegram."
)
STOPPED = "Disconnected: no more cryptomon alerts in this chat. Connect again from Settings → Notifications."
MAX_RETRY_SECONDS = 60.0  # the bot keeps answering soon after Telegram is back
NOT_CONNECTED = "This chat is not connected to cryptomon."


def secret_matches(header: str | None) -> bool:
    """The webhook's `X-Telegram-Bot-Api-Secret-Token`, compared in constant time (never with none set)."""
    expected = settings.TELEGRAM_WEBHOOK_SECRET
    return bool(expected) and hmac.compare_digest((header or "").encode(), expected.encode())


def handle_update(update: dict) -> str | None:
    """Act on one update and reply in its chat; returns the reply (None: nothing to answer)."""
    message = update.get("message") if isinstance(update, dict) else None
    if not isinstance(message, dict):
        return None
    chat = message.get("chat")
    if not isinstance(chat, dict):
        return None
    chat_id, text = chat.get("id"), message.get("text")
    if not isinstance(chat_id, int) or isinstance(chat_id, bool) or not isinstance(text, str):
        return None
    command, _, argument = text.strip().partition(" ")
    command = command.split("@", 1)[0].lower()
    if command == "/start":
        argument = argument.strip()
        if not argument:
            reply = HELLO
        else:
            name = chat.get("title") or chat.get("username") or chat.get("first_name") or "Telegram"
            channel = services.connect_telegram(argument, chat_id, f"Telegram {name}"[:200])
            reply = CONNECTED if channel is not None else LINK_REFUSED
    elif command == "/stop":
        reply = STOPPED if services.disconnect_telegram(chat_id) else NOT_CONNECTED
    else:
        reply = HELLO
    try:
        telegram.call("sendMessage", {"chat_id": chat_id, "text": reply})
    except TransientError as error:  # the binding stands; only the confirmation is lost
        logger.warning("telegram: reply to an update failed: %s", error)
    return reply


def set_webhook(url: str) -> None:
    """Register (or, with "", remove) the webhook; getUpdates only works without one."""
    payload = {"url": url}
    if url:
        payload["secret_token"] = settings.TELEGRAM_WEBHOOK_SECRET
        payload["allowed_updates"] = ["message"]
    telegram.call("setWebhook", payload)


class TelegramPoller(Worker):
    """Long-polls `getUpdates` and handles each update (no public URL needed). With TELEGRAM_WEBHOOK_URL
    set it registers the webhook instead and then idles; without a bot token it only idles, so a
    supervisor does not restart it in a loop."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0

    async def serve(self) -> None:
        if not settings.TELEGRAM_BOT_TOKEN:
            logger.warning("TELEGRAM_BOT_TOKEN is not set: the Telegram bot is off")
            self.started.set()
            await self.stopping.wait()
            return
        await self._retrying(set_webhook, settings.TELEGRAM_WEBHOOK_URL)
        if settings.TELEGRAM_WEBHOOK_URL:
            logger.info("telegram: webhook registered; updates arrive at the web server")
            self.started.set()
            await self.stopping.wait()
            return
        self.started.set()
        logger.info("telegram: polling getUpdates")
        while True:
            updates = await self._retrying(self._get_updates)
            for update in updates or []:
                if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
                    continue
                self.offset = max(self.offset, update["update_id"] + 1)
                try:
                    await in_thread(handle_update, update)
                    self.stats.inc("telegram_updates_total")
                except Exception:  # one bad update must not stop the bot
                    logger.exception("telegram: update %s failed", update["update_id"])
                    self.stats.inc("telegram_update_errors_total")

    def _get_updates(self) -> list:
        timeout = settings.TELEGRAM_POLL_TIMEOUT_SECONDS
        payload = {"offset": self.offset, "timeout": timeout, "allowed_updates": ["message"]}
        return telegram.call(
            "getUpdates", payload, timeout=timeout + settings.NOTIFICATIONS_HTTP_TIMEOUT_SECONDS
        )

    async def _retrying(self, function, *args):
        """Call until it succeeds: Telegram's retry_after on a 429, else exponential backoff."""
        attempt = 0
        while True:
            try:
                return await in_thread(function, *args)
            except TransientError as error:
                attempt += 1
                delay = min(services.retry_delay(attempt, error.retry_after), MAX_RETRY_SECONDS)
                logger.warning("telegram: %s; retrying in %.1f s", error, delay)
                self.stats.inc("telegram_errors_total")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
