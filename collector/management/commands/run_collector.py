"""`python manage.py run_collector`: every USDⓈ-M perpetual's 1-minute candles into NATS (docs/collector.md)."""

from __future__ import annotations

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from collector.worker import Collector, CollectorConfig
from cryptomon import exporter, messaging
from cryptomon.workers import run_until_signalled


class Command(BaseCommand):
    help = "Collect Binance USDⓈ-M 1-minute candles into NATS JetStream (candles.1m.<SYMBOL>)."

    def add_arguments(self, parser):
        parser.add_argument("--symbols", default="", help="only these symbols: SYM,SYM (default: all)")
        parser.add_argument("--shard", default="0/1", help="k/N: own the symbols with crc32 mod N = k")
        parser.add_argument(
            "--clock-rate",
            type=float,
            default=None,
            help="venue clock speed (1 for Binance; default: measured from /fapi/v1/time)",
        )

    def handle(self, *args, **options):
        try:
            shard = messaging.Shard.parse(options["shard"])
        except ValueError as error:
            raise CommandError(str(error)) from None
        symbols = [s.strip() for s in options["symbols"].split(",") if s.strip()] or None
        config = CollectorConfig.from_settings(symbols=symbols, shard=shard, clock_rate=options["clock_rate"])
        port = exporter.shard_port(settings.COLLECTOR_METRICS_PORT, shard.index)
        worker = Collector(config)
        asyncio.run(run_until_signalled(worker, alongside=exporter.serve_worker(worker, "collector", port)))
