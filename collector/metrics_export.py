"""The collector's health in Prometheus text format (docs/collector.md, "Health"), served on COLLECTOR_METRICS_PORT."""

from __future__ import annotations

import logging

from aiohttp import web

from cryptomon.workers import Stats

logger = logging.getLogger(__name__)

HELP = {
    "collector_frames_total": ("counter", "WebSocket frames received"),
    "collector_invalid_frames_total": ("counter", "frames dropped as invalid, by reason"),
    "collector_candles_published_total": ("counter", "final candles acknowledged by JetStream, by source"),
    "collector_candles_dropped_total": (
        "counter",
        "candles not buffered (buffer full); backfill restores them",
    ),
    "collector_repairs_published_total": ("counter", "hole-scan repairs of minutes older than the newest"),
    "collector_gaps_filled_total": ("counter", "minutes published from REST or as filled instead of live"),
    "collector_reconnects_total": ("counter", "WebSocket connections (re)opened after a failure"),
    "collector_watchdog_replacements_total": ("counter", "connections replaced for silence"),
    "collector_age_replacements_total": ("counter", "connections replaced before their 24 h close"),
    "collector_publish_failures_total": ("counter", "JetStream publishes that failed and were retried"),
    "collector_live_published_total": ("counter", "candles.live messages sent"),
    "collector_live_dropped_total": ("counter", "candles.live messages dropped while NATS was away"),
    "collector_connections": ("gauge", "open WebSocket connections"),
    "collector_streams": ("gauge", "kline streams subscribed"),
    "collector_symbols": ("gauge", "symbols in the universe of this shard"),
    "collector_buffered_candles": ("gauge", "final candles waiting for JetStream"),
    "collector_lag_ms": ("gauge", "venue time minus event time of the newest published candle"),
    "collector_rest_weight_used": ("gauge", "REST weight used in the current venue minute"),
    "collector_rest_requests_total": ("counter", "REST requests"),
    "collector_rest_rate_limited_total": ("counter", "REST 429 answers"),
    "collector_rest_banned_total": ("counter", "REST 418 answers"),
    "collector_rest_region_blocked_total": ("counter", "REST 451 answers"),
}


async def serve(stats: Stats, host: str, port: int) -> web.AppRunner | None:
    """Serve /metrics; a port in use is logged, not fatal (the collector matters more than its metrics)."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=stats.render(HELP), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        logger.warning("collector metrics endpoint on %s:%s not started: %s", host, port, error)
        await runner.cleanup()
        return None
    logger.info("collector metrics on http://%s:%s/metrics", host, port)
    return runner
