"""`python manage.py run_alerts [--shard k/N]`: evaluate the alert rules on every bar (DESIGN §1, §8).

Long-running; stop with Ctrl-C or SIGTERM (the message in hand is finished first).
"""

from __future__ import annotations

import asyncio
import signal

from django.core.management.base import BaseCommand, CommandError

from alerts.engine import AlertWorker
from cryptomon import messaging


class Command(BaseCommand):
    help = "Evaluate alert rules on metrics.calculated.> (and metrics.live.> for intrabar rules)."

    def add_arguments(self, parser):
        parser.add_argument("--shard", default="0/1", help="k/N: own the symbols with crc32 mod N = k")
        parser.add_argument("--nats-url", default=None, help="default: NATS_URL")

    def handle(self, *args, **options):
        try:
            shard = messaging.Shard.parse(options["shard"])
        except ValueError as error:
            raise CommandError(str(error), returncode=2) from None
        asyncio.run(self._run(AlertWorker(shard, nats_url=options["nats_url"])))

    async def _run(self, worker: AlertWorker) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)

        def started() -> None:
            self.stdout.write(f"run_alerts: started as {worker.durable}")
            self.stdout.flush()

        await worker.run(stop, started)
        self.stdout.write(f"run_alerts: stopped {worker.engine.counters.as_dict()}")
