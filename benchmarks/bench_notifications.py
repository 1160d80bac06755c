"""Notification delivery: deliveries per second to a local webhook receiver with one Celery worker, and
alert stored → delivered latency (p50/p99).

Starts its own PostgreSQL and Valkey (embedded, in a temporary directory), migrates, runs ONE real
`celery -A cryptomon.celery worker` process and a local HTTP receiver, then:
- latency: one webhook channel, group window 0, alerts stored one at a time (like run_alerts) every
  50 ms; latency = receiver arrival − commit of the alert's transaction;
- throughput: C channels, group window 0, N alerts stored in a burst; deliveries (alert × channel)
  marked sent per second and HTTP requests per second until all are sent.

    .venv/bin/python benchmarks/bench_notifications.py [--alerts 200] [--channels 50] [--burst 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Receiver:
    def __init__(self):
        self.arrivals: list[tuple[float, dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.arrivals.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=200, help="alerts for the latency run")
    parser.add_argument("--channels", type=int, default=50, help="channels for the throughput run")
    parser.add_argument("--burst", type=int, default=200, help="alerts for the throughput run")
    args = parser.parse_args()

    var_dir = Path(tempfile.mkdtemp(prefix="cryptomon-bench-notify-"))
    receiver = Receiver()
    os.environ.update(
        CRYPTOMON_VAR_DIR=str(var_dir),
        DJANGO_SETTINGS_MODULE="cryptomon.settings",
        NOTIFICATIONS_GROUP_SECONDS="0",
        NOTIFICATIONS_ALLOW_PRIVATE_TARGETS="true",
        NOTIFICATIONS_ALLOWED_EXTRA_PORTS=str(receiver.server.server_address[1]),  # the local receiver
        LOG_LEVEL="WARNING",
    )
    from cryptomon import embedded

    started = embedded.configure_environment(var_dir, durable=False)
    worker = None
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from datetime import UTC, datetime, timedelta

        from django.contrib.auth import get_user_model
        from django.db import transaction

        from alerts.models import AlertHistory, OutboxEntry
        from notifications import services
        from notifications.models import Delivery

        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "cryptomon.celery",
                "worker",
                "--loglevel",
                "WARNING",
                "--concurrency",
                "4",
                "--pool",
                "threads",
            ],
            cwd=ROOT,
            env=os.environ.copy(),
            start_new_session=True,
        )
        User = get_user_model()
        base = datetime(2026, 1, 1, tzinfo=UTC)
        minute = [0]

        def store(symbol: str) -> float:
            minute[0] += 1
            with transaction.atomic(using="timeseries"):
                alert = AlertHistory.objects.create(
                    rule="bench",
                    rule_name="Bench",
                    severity="info",
                    direction="bull",
                    symbol=symbol,
                    time=base + timedelta(minutes=minute[0]),
                    triggered_at=datetime.now(UTC),
                    price=1.0,
                    metrics={"volume_1d": 1e9},
                )
                services.enqueue_after_commit([OutboxEntry.objects.create(alert_id=alert.pk)])
            return time.time()

        # warm-up: the worker is up and connected
        first = User.objects.create_user("bench0", password="bench-unused-pw")
        channel = services.create_channel(first, "webhook", {"url": receiver.url})
        store("WARMUSDT")
        deadline = time.time() + 60
        while not receiver.arrivals and time.time() < deadline:
            time.sleep(0.05)
        if not receiver.arrivals:
            print("worker did not deliver the warm-up alert", file=sys.stderr)
            return 1

        # latency
        receiver.arrivals.clear()
        stored: dict[str, float] = {}
        for index in range(args.alerts):
            symbol = f"LAT{index}USDT"
            stored[symbol] = store(symbol)
            time.sleep(0.05)
        deadline = time.time() + 120
        while (
            sum(len(b.get("alerts", [b])) for _, b in receiver.arrivals) < args.alerts
            and time.time() < deadline
        ):
            time.sleep(0.05)
        latencies = []
        for at, body in receiver.arrivals:
            for payload in body.get("alerts", [body]):
                latencies.append((at - stored[payload["symbol"]]) * 1000)
        print(f"latency, 1 channel, {len(latencies)} alerts every 50 ms, group window 0:")
        print(
            f"  stored → delivered p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms, "
            f"max {max(latencies):.1f} ms; {len(receiver.arrivals)} HTTP requests"
        )

        # throughput
        channel.delete()
        users = [
            User.objects.create_user(f"bench{i + 1}", password="bench-unused-pw")
            for i in range(args.channels)
        ]
        for user in users:
            services.create_channel(user, "webhook", {"url": receiver.url})
        receiver.arrivals.clear()
        before = Delivery.objects.filter(status="sent").count()
        want = before + args.channels * args.burst
        t0 = time.time()
        for index in range(args.burst):
            store(f"THR{index}USDT")
        deadline = time.time() + 600
        while Delivery.objects.filter(status="sent").count() < want and time.time() < deadline:
            time.sleep(0.1)
        elapsed = time.time() - t0
        sent = Delivery.objects.filter(status="sent").count() - before
        print(
            f"throughput, {args.channels} channels × {args.burst} alerts stored in a burst, 1 worker (4 threads):"
        )
        print(
            f"  {sent} deliveries in {elapsed:.1f} s = {sent / elapsed:.0f} deliveries/s; "
            f"{len(receiver.arrivals)} HTTP requests = {len(receiver.arrivals) / elapsed:.0f} requests/s"
        )
        return 0 if sent == args.channels * args.burst else 1
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        embedded.stop_servers(var_dir, started)
        shutil.rmtree(var_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
