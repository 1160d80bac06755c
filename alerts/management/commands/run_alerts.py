"""`python manage.py run_alerts [--shard k/N]`: evaluate the alert rules on every bar (docs/contract.md §1, §8).

Long-running; stop with Ctrl-C or SIGTERM (the message in hand is finished first).
"""

from __future__ import annotations

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from alerts.engine import AlertWorker
from cryptomon import exporter, messaging
from cryptomon.workers import run_until_signalled


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
        def started() -> None:
            self.stdout.write(f"run_alerts: started as {worker.durable}")
            self.stdout.flush()

        port = exporter.shard_port(settings.ALERTS_METRICS_PORT, worker.shard.index)
        await run_until_signalled(worker, started, alongside=exporter.serve_worker(worker, "alerts", port))
        self.stdout.write(f"run_alerts: stopped ({worker.stats.summary()})")
