"""`python manage.py run_gateway`: the NATS → Channels bridge (docs/contract.md §1, §10; see gateway.bridge).

Long-running; survives NATS and Redis restarts (clients are told to resync after either). Stop with
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.management.base import BaseCommand

from cryptomon import exporter
from cryptomon.workers import run_until_signalled
from gateway.bridge import Bridge


class Command(BaseCommand):
    help = "Bridge alerts.triggered.>, metrics.live.> and the feed status from NATS to WebSocket clients."

    def add_arguments(self, parser):
        parser.add_argument("--nats-url", default=None, help="default: NATS_URL")

    def handle(self, *args, **options):
        asyncio.run(self._run(options["nats_url"]))

    async def _run(self, nats_url: str | None) -> None:
        bridge = Bridge(
            get_channel_layer(),
            nats_url=nats_url,
            tick_seconds=settings.GATEWAY_TICK_SECONDS,
            stale_seconds=settings.FEED_STALE_SECONDS,
            status_ttl_seconds=settings.FEED_STATUS_TTL_SECONDS,
        )
        self.stdout.write("run_gateway: started")
        self.stdout.flush()
        metrics = exporter.serve_worker(bridge, "gateway", settings.GATEWAY_METRICS_PORT)
        await run_until_signalled(bridge, alongside=metrics)
        self.stdout.write(f"run_gateway: stopped ({bridge.stats.summary()})")
