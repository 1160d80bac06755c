"""`python manage.py run_metrics [--shard k/N]`: candles into §7 metrics, stored and published (docs/metrics.md)."""

from __future__ import annotations

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from cryptomon import exporter, messaging
from cryptomon.workers import run_until_signalled
from metrics.engine import MetricsWorker, WorkerConfig


class Command(BaseCommand):
    help = "Compute the docs/contract.md §7 metrics of every final candle (metrics.calculated.<SYMBOL>, metrics_calculated)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--shard", default="0/1", help="k/N: own the symbols with crc32(symbol) mod N = k (default 0/1)"
        )

    def handle(self, *args, **options):
        try:
            shard = messaging.Shard.parse(options["shard"])
        except ValueError as error:
            raise CommandError(str(error)) from None
        worker = MetricsWorker(WorkerConfig.from_settings(shard=shard))
        port = exporter.shard_port(settings.METRICS_METRICS_PORT, shard.index)
        asyncio.run(run_until_signalled(worker, alongside=exporter.serve_worker(worker, "metrics", port)))
