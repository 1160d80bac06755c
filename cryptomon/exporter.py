"""Prometheus `/metrics` for every process (docs/operations.md, "Observe"): one list of names, one way to
serve them.

- The async workers (collector, metrics, alerts, gateway bridge) count in their `Stats`
  (`cryptomon/workers.py`); `serve_worker` exports it on the worker's own port from its event loop
  (so reading it never races the loop), with JetStream consumer lag read from consumer info
  every `LAG_POLL_SECONDS`. Names here carry no prefix; the exporter adds `cryptomon_`.
- The web app and Celery count with prometheus-client's own thread-safe metrics (below); Celery's prefork
  children write them to `PROMETHEUS_MULTIPROC_DIR` (prometheus-client's multiprocess mode) and the
  worker's main process serves the sum. A web server with several worker processes would do the same.

Label values are bounded: no symbol or user labels; `rule` is a global rule's slug or `user`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from asgiref.sync import iscoroutinefunction
from django.utils.decorators import sync_and_async_middleware
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from cryptomon.workers import BUCKETS, Stats, Worker

logger = logging.getLogger(__name__)

PREFIX = "cryptomon_"
LAG_POLL_SECONDS = 5.0

# The workers' metrics: name → (type, labels, meaning). The stage is the name's first word.
WORKER_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    # collector: the venue feed
    "collector_frames_total": ("counter", (), "WebSocket frames received (in)"),
    "collector_finals_total": ("counter", (), "final (closed) candles received"),
    "collector_invalid_frames_total": ("counter", ("reason",), "frames dropped as invalid"),
    "collector_duplicate_finals_total": ("counter", (), "final candles received twice"),
    "collector_candles_published_total": (
        "counter",
        ("source",),
        "final candles acknowledged by JetStream (out), by source ws/rest/filled",
    ),
    "collector_candles_dropped_total": (
        "counter",
        (),
        "candles not buffered (buffer full); backfill restores them",
    ),
    "collector_repairs_published_total": ("counter", ("source",), "hole-scan repairs of older minutes"),
    "collector_gaps_filled_total": ("counter", ("source",), "minutes published from REST or as filled"),
    "collector_reconnects_total": ("counter", (), "WebSocket connections (re)opened after a failure"),
    "collector_watchdog_replacements_total": ("counter", (), "connections replaced for silence"),
    "collector_age_replacements_total": ("counter", (), "connections replaced before their 24 h close"),
    "collector_publish_failures_total": ("counter", (), "JetStream publishes that failed and were retried"),
    "collector_publish_seconds": (
        "histogram",
        (),
        "one batch of final candles published until JetStream's acks",
    ),
    "collector_live_published_total": ("counter", (), "candles.live messages sent"),
    "collector_live_dropped_total": ("counter", (), "candles.live messages dropped while NATS was away"),
    "collector_connections": ("gauge", (), "open WebSocket connections"),
    "collector_streams": ("gauge", (), "kline streams subscribed"),
    "collector_symbols": ("gauge", (), "symbols in the universe of this shard"),
    "collector_live_symbols": ("gauge", (), "symbols with a final candle among the last three venue minutes"),
    "collector_buffered_candles": ("gauge", (), "final candles waiting for JetStream"),
    "collector_lag_seconds": ("gauge", (), "venue time minus event time of the newest published candle"),
    "collector_backfills_running": ("gauge", (), "REST backfills in progress"),
    "collector_rest_weight_used": ("gauge", (), "REST weight used in the current venue minute"),
    "collector_rest_requests_total": ("counter", (), "REST requests"),
    "collector_rest_rate_limited_total": ("counter", (), "REST 429 answers"),
    "collector_rest_banned_total": ("counter", (), "REST 418 answers"),
    "collector_rest_region_blocked_total": ("counter", (), "REST 451 answers"),
    # metrics: candles into §7 metrics
    "metrics_candles_received_total": ("counter", (), "final candles fetched by the bar consumer (in)"),
    "metrics_bars_published_total": ("counter", (), "metrics bars confirmed by JetStream (out)"),
    "metrics_candles_stored_total": ("counter", (), "candles written to candles_1m"),
    "metrics_batch_seconds": ("histogram", (), "one fetched batch made into bars and published"),
    "metrics_db_write_seconds": ("histogram", ("table",), "one storage transaction: candles or bars"),
    "metrics_gaps_forced_total": ("counter", (), "missing minutes given up on after the safety timeout"),
    "metrics_live_published_total": ("counter", (), "metrics.live previews sent"),
    "metrics_live_dropped_total": ("counter", (), "metrics.live previews dropped"),
    "metrics_bad_messages_total": ("counter", (), "candle messages that did not decode (terminated)"),
    "metrics_refused_rows_total": ("counter", (), "rows refused by the database (e.g. out of range)"),
    "metrics_store_failures_total": ("counter", (), "candle batches whose write failed (redelivered)"),
    "metrics_restarts_total": ("counter", (), "rebuilds after an error"),
    # alerts: bars through the rules
    "alerts_bars_total": ("counter", (), "metrics bars evaluated (in)"),
    "alerts_created_total": ("counter", (), "alerts stored (out)"),
    "alerts_fired_total": (
        "counter",
        ("rule",),
        "alerts sent to publishing, by global rule slug or user (a redelivered bar's count again)",
    ),
    "alerts_wave_seconds": ("histogram", (), "one wave of bars decided, stored and published"),
    "alerts_db_write_seconds": ("histogram", (), "one alert_history + outbox transaction"),
    "alerts_live_updates_total": ("counter", (), "metrics.live previews evaluated"),
    "alerts_numpy_waves_total": ("counter", (), "waves decided by the vectorised path"),
    "alerts_skipped_not_owned_total": ("counter", (), "bars of symbols another shard owns"),
    "alerts_retries_total": ("counter", (), "waves retried after a transient error"),
    "alerts_dead_letters_total": ("counter", (), "bars given up on (dead-lettered)"),
    "alerts_bad_payloads_total": ("counter", (), "metrics messages that did not decode"),
    # gateway: NATS into the Channels layer
    "gateway_alerts_total": ("counter", (), "alerts received from NATS (in)"),
    "gateway_live_total": ("counter", (), "metrics previews and bars received (in)"),
    "gateway_heartbeats_total": ("counter", (), "status heartbeats received"),
    "gateway_sent_total": ("counter", (), "group messages sent to the Channels layer (out)"),
    "gateway_send_seconds": ("histogram", (), "one group send to the Channels layer"),
    "gateway_duplicate_alerts_total": ("counter", (), "alerts seen twice and sent once"),
    "gateway_resyncs_total": ("counter", (), "market resynchronisations after a NATS reconnect"),
    "gateway_bad_messages_total": ("counter", (), "messages that did not decode"),
    "gateway_send_errors_total": ("counter", (), "group sends that failed"),
}
for _stage in ("metrics", "alerts"):
    WORKER_METRICS |= {
        f"{_stage}_consumer_pending": ("gauge", ("consumer",), "JetStream messages not yet delivered"),
        f"{_stage}_consumer_ack_pending": ("gauge", ("consumer",), "delivered, not yet acknowledged"),
        f"{_stage}_consumer_ack_floor_age_seconds": (
            "gauge",
            ("consumer",),
            "time since the ack floor last moved while messages wait (0 when none wait)",
        ),
    }

# `<stage>_errors_total{reason}`: the error counters above, one family per stage for dashboards and alerts.
ERROR_REASONS: dict[str, str] = {
    "collector_invalid_frames_total": "invalid_frame",
    "collector_publish_failures_total": "publish_failed",
    "collector_candles_dropped_total": "buffer_full",
    "collector_rest_rate_limited_total": "rest_rate_limited",
    "collector_rest_banned_total": "rest_banned",
    "collector_watchdog_replacements_total": "feed_silent",
    "metrics_bad_messages_total": "bad_message",
    "metrics_refused_rows_total": "refused_row",
    "metrics_store_failures_total": "store_failed",
    "metrics_restarts_total": "restart",
    "alerts_retries_total": "retry",
    "alerts_dead_letters_total": "dead_letter",
    "alerts_bad_payloads_total": "bad_payload",
    "gateway_bad_messages_total": "bad_message",
    "gateway_send_errors_total": "send_failed",
}
for _stage in ("collector", "metrics", "alerts", "gateway"):
    WORKER_METRICS[f"{_stage}_errors_total"] = ("counter", ("reason",), "errors of the stage, by reason")

# --- the web app and Celery: prometheus-client's own metrics -------------------------------------------

_MP = {"multiprocess_mode": "livesum"}
WEB_REQUESTS = Counter(
    "cryptomon_web_requests_total", "HTTP requests answered (in/out)", ["method", "status"]
)
WEB_REQUEST_SECONDS = Histogram(
    "cryptomon_web_request_seconds", "HTTP request handling time", ["method"], buckets=BUCKETS
)
WEB_WEBSOCKET_CLIENTS = Gauge("cryptomon_web_websocket_clients", "open alert WebSockets", **_MP)
WEB_WEBSOCKET_SEND_BUFFER_CLOSES = Counter(
    "cryptomon_web_websocket_send_buffer_closes_total", "WebSockets closed with 4008 (send buffer full)"
)
WEB_WEBSOCKET_MESSAGES = Counter(
    "cryptomon_web_websocket_messages_total", "frames sent to WebSocket clients (out)"
)
NOTIFICATION_DELIVERIES = Counter(
    "cryptomon_notifications_deliveries_total",
    "notification sends by channel kind and outcome (sent, transient, permanent, rejected)",
    ["kind", "outcome"],
)
NOTIFICATION_SEND_SECONDS = Histogram(
    "cryptomon_notifications_send_seconds", "one send through a transport", ["kind"], buckets=BUCKETS
)
CELERY_TASKS = Counter(
    "cryptomon_celery_tasks_total", "Celery tasks finished, by task and state", ["task", "state"]
)
CELERY_TASK_SECONDS = Histogram(
    "cryptomon_celery_task_seconds", "Celery task run time", ["task"], buckets=BUCKETS
)
OUTBOX_METRICS = {
    "cryptomon_notifications_outbox_age_seconds": "age of the oldest outbox row not yet fanned out (0: none)",
    "cryptomon_notifications_pending_deliveries": "deliveries waiting to be sent",
    "cryptomon_notifications_pending_age_seconds": "age of the oldest delivery waiting to be sent (0: none)",
}


def exported_names() -> set[str]:
    """Every `cryptomon_` family any process exports (docs/operations.md lists exactly these)."""
    names = {PREFIX + name for name in WORKER_METRICS}
    names |= {
        metric.name + ("_total" if metric.type == "counter" else "")
        for collector in (
            WEB_REQUESTS,
            WEB_REQUEST_SECONDS,
            WEB_WEBSOCKET_CLIENTS,
            WEB_WEBSOCKET_SEND_BUFFER_CLOSES,
            WEB_WEBSOCKET_MESSAGES,
            NOTIFICATION_DELIVERIES,
            NOTIFICATION_SEND_SECONDS,
            CELERY_TASKS,
            CELERY_TASK_SECONDS,
        )
        for metric in collector.describe()
    }
    return names | set(OUTBOX_METRICS)


# --- workers ---------------------------------------------------------------------------------------------


class StatsCollector:
    """A worker's `Stats` as Prometheus families: every metric of its stage, counted or not yet."""

    def __init__(self, stats: Stats, stage: str) -> None:
        self.stats = stats
        self.stage = stage

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        values = list(stats.values.items())
        histograms = list(stats.histograms.items())
        errors = CounterMetricFamily(f"{PREFIX}{self.stage}_errors_total", "errors", labels=["reason"])
        for name, (kind, labels, meaning) in WORKER_METRICS.items():
            if not name.startswith(self.stage + "_") or name == f"{self.stage}_errors_total":
                continue
            full = PREFIX + name
            if kind == "histogram":
                family = HistogramMetricFamily(full, meaning, labels=list(labels))
                for (key, pairs), counts in histograms:
                    if key == name:
                        family.add_metric([v for _, v in pairs], _buckets(counts), counts[-1])
                if not labels and not any(key == name for (key, _), _ in histograms):
                    family.add_metric([], _buckets([0.0] * (len(BUCKETS) + 2)), 0.0)
                yield family
                continue
            make = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = make(full, meaning, labels=list(labels))
            if name in stats.gauges:
                family.add_metric([], stats.gauges[name]() or 0)
            else:
                seen = [(pairs, value) for (key, pairs), value in values if key == name]
                for pairs, value in seen:
                    family.add_metric([v for _, v in pairs], value)
                if not seen and not labels:
                    family.add_metric([], 0)
            if name in ERROR_REASONS:
                total = stats.get(name) if name in stats.gauges else stats.total(name)
                errors.add_metric([ERROR_REASONS[name]], total)
            yield family
        yield errors


def _buckets(counts: list[float]) -> list[tuple[str, float]]:
    cumulative, out = 0.0, []
    for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts[:-1], strict=True):
        cumulative += count
        out.append((bound, cumulative))
    return out


def shard_port(port: int, index: int) -> int:
    """Shard k of a worker listens on its setting's port + k (0 stays off)."""
    return port + index if port else 0


def registry_for(stats: Stats, stage: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats, stage))
    ProcessCollector(registry=registry)
    return registry


async def serve_worker(worker: Worker, stage: str, port: int) -> None:
    """Serve the worker's `/metrics` on `port` (0: nothing) and poll its JetStream consumers until
    cancelled. A port in use is logged, not fatal: the worker matters more than its metrics."""
    if not port:
        return
    from aiohttp import web
    from django.conf import settings
    from prometheus_client.aiohttp import make_aiohttp_handler

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry_for(worker.stats, stage)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host = settings.METRICS_HOST
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as error:
            logger.warning("%s metrics endpoint on %s:%s not started: %s", stage, host, port, error)
            return
        logger.info("%s: /metrics on http://%s:%s/metrics", stage, host, port)
        while True:
            await poll_consumers(worker, stage)
            await asyncio.sleep(LAG_POLL_SECONDS)
    finally:
        await runner.cleanup()


async def poll_consumers(worker: Worker, stage: str) -> None:
    """Pending, ack-pending and ack-floor age of each of the worker's durable consumers."""
    js = getattr(worker, "js", None)
    if js is None:
        return
    for stream, durable, label in worker.consumers():
        try:
            info = await js.consumer_info(stream, durable)
        except Exception as error:  # NATS away, consumer not created yet: next poll
            logger.debug("consumer info of %s: %s", durable, error)
            continue
        pending, ack_pending = info.num_pending or 0, info.num_ack_pending or 0
        worker.stats.set(f"{stage}_consumer_pending", pending, consumer=label)
        worker.stats.set(f"{stage}_consumer_ack_pending", ack_pending, consumer=label)
        age = 0.0
        last = info.ack_floor.last_active if info.ack_floor else None
        if pending + ack_pending and last is not None:
            age = max(0.0, (datetime.now(UTC) - last).total_seconds())
        elif pending + ack_pending:
            age = max(0.0, (datetime.now(UTC) - info.created).total_seconds())
        worker.stats.set(f"{stage}_consumer_ack_floor_age_seconds", age, consumer=label)


# --- web and Celery ----------------------------------------------------------------------------------------


class ReadingCollector:
    """Gauges read at scrape time by `read()` (a dict of name → value), e.g. queue ages from the database.
    A failing read leaves them out of that scrape; the rest still answers."""

    def __init__(self, read: Callable[[], dict[str, float]], meanings: dict[str, str]) -> None:
        self.read = read
        self.meanings = meanings

    def collect(self) -> Iterable[Metric]:
        try:
            values = self.read()
        except Exception as error:
            logger.warning("metrics %s unavailable: %s", ", ".join(self.meanings), error)
            return
        for name, meaning in self.meanings.items():
            yield GaugeMetricFamily(name, meaning, value=values[name])


def start_thread_exporter(port: int, host: str, collectors: Iterable[object] = ()) -> None:
    """Serve this process's prometheus-client metrics on `port` from a daemon thread (web, Celery). With
    PROMETHEUS_MULTIPROC_DIR set, the sum over the processes that write there."""
    registry: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry)
        ProcessCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        logger.warning("metrics endpoint on port %s not started: %s", port, error)
        return
    logger.info("metrics on http://%s:%s/metrics", host, port)


def clear_multiprocess_dir(directory: str) -> None:
    """Make an empty PROMETHEUS_MULTIPROC_DIR before the processes that write there start (files of a
    previous run would be summed in; the directory must exist before prometheus-client is imported)."""
    os.makedirs(directory, exist_ok=True)
    for entry in os.scandir(directory):
        if entry.name.endswith(".db"):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@sync_and_async_middleware
def request_metrics(get_response):
    """`cryptomon_web_requests_total` and `cryptomon_web_request_seconds` for every HTTP request (first in
    MIDDLEWARE, so it times the whole stack); labels bounded to known methods and the status class."""

    def record(request, started: float, status: int) -> None:
        method = request.method if request.method in _METHODS else "other"
        WEB_REQUEST_SECONDS.labels(method).observe(time.perf_counter() - started)
        WEB_REQUESTS.labels(method, f"{status // 100}xx").inc()

    if iscoroutinefunction(get_response):

        async def middleware(request):
            started = time.perf_counter()
            response = await get_response(request)
            record(request, started, response.status_code)
            return response

    else:

        def middleware(request):
            started = time.perf_counter()
            response = get_response(request)
            record(request, started, response.status_code)
            return response

    return middleware
