"""The collector's health in Prometheus text format (issue 4 §6), served on COLLECTOR_METRICS_PORT."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from aiohttp import web

logger = logging.getLogger(__name__)

_HELP = {
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


class Stats:
    """Counters and gauges by (name, label pairs); cheap to bump from the hot path."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple], float] = defaultdict(float)
        self.gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self.values[(name, tuple(sorted(labels.items())))] += amount

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, tuple(sorted(labels.items()))), 0)

    def total(self, name: str) -> float:
        return sum(value for (key, _), value in self.values.items() if key == name)

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self.gauges[name] = read

    def render(self) -> str:
        lines: list[str] = []
        names = sorted({name for name, _ in self.values} | set(self.gauges))
        for name in names:
            kind, text = _HELP.get(name, ("gauge" if name in self.gauges else "counter", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            if name in self.gauges:
                lines.append(f"{name} {self.gauges[name]()}")
                continue
            for (key, labels), value in sorted(self.values.items()):
                if key == name:
                    label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def serve(stats: Stats, host: str, port: int) -> web.AppRunner | None:
    """Serve /metrics; a port in use is logged, not fatal (the collector matters more than its metrics)."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=stats.render(), content_type="text/plain")

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
