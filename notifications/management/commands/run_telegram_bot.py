"""`python manage.py run_telegram_bot`: the Telegram bot behind "Connect Telegram" (notifications.telegram_bot).

Long-polls getUpdates when TELEGRAM_WEBHOOK_URL is empty; otherwise registers that webhook (with
TELEGRAM_WEBHOOK_SECRET) and idles. Stop with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand

from cryptomon.workers import run_until_signalled
from notifications.telegram_bot import TelegramPoller


class Command(BaseCommand):
    help = "Run the Telegram bot: binds chats to users (/start <token>) and unbinds them (/stop)."

    def handle(self, *args, **options):
        asyncio.run(self._run())

    async def _run(self) -> None:
        poller = TelegramPoller()

        def announce() -> None:
            self.stdout.write("run_telegram_bot: started")
            self.stdout.flush()

        await run_until_signalled(poller, on_started=announce)
        self.stdout.write(f"run_telegram_bot: stopped ({poller.stats.summary()})")
