"""Realtime gateway: WebSocket viewers of the full market page held by one machine while alerts arrive at
a steady rate and market frames flow; delivery, order and alert latency p50/p99 per client count.

Starts its own PostgreSQL, NATS and Valkey (embedded, temporary directory), migrates, then for each layer
(`CHANNEL_LAYER=pubsub`; `core` on request) runs `--web-workers` daphne processes sharing one listening
socket (`gateway.serving`, as `run_monitor --web-workers`) and ONE `run_gateway`, opens N anonymous clients
(`ALLOW_ANONYMOUS_DASHBOARD=true`, each subscribed with `market: true`), and has a separate publisher
process send `metrics.live` for S symbols every second and `--alerts` alerts per second for `--seconds`
seconds on JetStream. Latency = client receive wall time − publish wall time (same machine, same clock),
so it includes the client process's own queueing: all N clients run in one asyncio process. Clients accept
both `alert` and `alerts` frames and check that each alert arrives once and in publishing order.

    .venv/bin/python benchmarks/bench_gateway.py [--clients 1000] [--layers pubsub] [--symbols 600]
        [--alerts 50] [--seconds 60] [--web-workers 2] [--drain 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


# --- publisher (its own process, so client load cannot delay publishing) -----------------------------


async def publish(symbols: int, alerts: int, seconds: float, warmup: float, after: float) -> None:
    from cryptomon import messaging

    nc, js = await messaging.connect_jetstream("bench-publisher")
    names = [f"B{n:04d}USDT" for n in range(symbols)]
    run = time.time_ns()  # alert ids unique per run: the gateway drops a repeated id
    done = asyncio.Event()

    async def market() -> None:
        tick = 0
        started = time.time()
        while not done.is_set():
            for name in names:
                payload = {
                    "v": 1,
                    "symbol": name,
                    "open_time": 1_700_000_000_000 + tick * 60_000,
                    "final": False,
                    "late": False,
                    "price": 100.0 + tick,
                    "metrics": {"change_5m": tick / 10, "volume_1h": 1e6, "volume_1d": 1e8, "rsi_14": 50.0},
                }
                await nc.publish(f"metrics.live.{name}", messaging.encode(payload))
            await nc.flush()
            tick += 1
            await asyncio.sleep(max(0.0, 1.0 - (time.time() - started) % 1.0))

    feeder = asyncio.create_task(market())
    await asyncio.sleep(warmup)
    started = time.monotonic()
    for n in range(int(alerts * seconds)):
        name = names[n % len(names)]
        open_time = 1_800_000_000_000 + n * 60_000
        payload = {
            "v": 1,
            "id": f"bench{run}:{name}:{open_time}",
            "rule": "bench",
            "rule_name": "Bench",
            "severity": "info",
            "direction": "bull",
            "symbol": name,
            "open_time": open_time,
            "triggered_at": int(time.time() * 1000),
            "price": 1.0,
            "description": "",
            "metrics": {"volume_1d": 1e8},
            "owner": None,
            "late": False,
            "seq": n,
            "sent": time.time(),
        }
        await js.publish(f"alerts.triggered.{name}", messaging.encode(payload))
        await asyncio.sleep(max(0.0, started + (n + 1) / alerts - time.monotonic()))
    await asyncio.sleep(after)
    done.set()
    await feeder
    await nc.close()


# --- clients -------------------------------------------------------------------------------------------


class Client:
    def __init__(self):
        self.latencies: list[float] = []
        self.alert_ids: set[str] = set()
        self.market_frames = 0
        self.alert_frames = 0
        self.out_of_order = 0
        self.duplicates = 0
        self.last_seq = -1
        self.closed_with: int | str | None = None

    def saw(self, alert: dict, now: float) -> None:
        if alert["id"] in self.alert_ids:
            self.duplicates += 1
            return
        self.alert_ids.add(alert["id"])
        self.latencies.append((now - alert["sent"]) * 1000)
        if alert["seq"] < self.last_seq:
            self.out_of_order += 1
        self.last_seq = alert["seq"]


async def hold(url: str, origin: str, client: Client, ready: asyncio.Event, stop: asyncio.Event, count):
    import msgspec
    from websockets.asyncio.client import connect

    decoder = msgspec.json.Decoder()
    try:
        async with connect(url, origin=origin, max_size=None, open_timeout=60, ping_interval=None) as ws:
            await ws.send('{"type":"subscribe","symbols":null,"rules":null,"market":true}')
            snapshots = 0
            while snapshots < 2:  # the connect snapshot, then the subscribe snapshot
                if (await ws.recv()).startswith('{"type":"snapshot"'):
                    snapshots += 1
            count()
            await ready.wait()
            while not stop.is_set():
                try:
                    text = await asyncio.wait_for(ws.recv(), timeout=0.5)
                except TimeoutError:
                    continue
                now = time.time()
                if text.startswith('{"type":"market"'):
                    client.market_frames += 1
                elif text.startswith('{"type":"alerts"'):
                    client.alert_frames += 1
                    for alert in decoder.decode(text)["alerts"]:
                        client.saw(alert, now)
                elif text.startswith('{"type":"alert"'):
                    client.alert_frames += 1
                    client.saw(decoder.decode(text)["alert"], now)
    except Exception as error:
        code = getattr(getattr(error, "rcvd", None), "code", None)
        client.closed_with = code if code is not None else type(error).__name__


async def run_clients(port: int, n: int, args) -> dict:
    url, origin = f"ws://127.0.0.1:{port}/ws/alerts/", f"http://127.0.0.1:{port}"
    clients = [Client() for _ in range(n)]
    ready, stop = asyncio.Event(), asyncio.Event()
    connected = [0]

    def count():
        connected[0] += 1

    tasks = []
    started = time.monotonic()
    for i, client in enumerate(clients):
        tasks.append(asyncio.create_task(hold(url, origin, client, ready, stop, count)))
        if i % args.ramp == args.ramp - 1:  # args.ramp new sockets per 100 ms
            await asyncio.sleep(0.1)
    while connected[0] + sum(c.closed_with is not None for c in clients) < n:
        if time.monotonic() - started > 180:
            break
        await asyncio.sleep(0.1)
    connect_seconds = time.monotonic() - started
    ready.set()
    publisher = subprocess.Popen(
        [sys.executable, __file__, "--publish", str(args.symbols), str(args.alerts), str(args.seconds)],
        cwd=ROOT,
        env=os.environ.copy(),
    )
    window_started = time.monotonic()
    await asyncio.to_thread(publisher.wait)
    # Let the alerts drain: stop early once everything arrived.
    deadline = time.monotonic() + args.drain
    while time.monotonic() < deadline:
        if sum(len(c.alert_ids) for c in clients) >= n * round(args.alerts * args.seconds):
            break
        await asyncio.sleep(0.2)
    window = time.monotonic() - window_started
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [v for c in clients for v in c.latencies]
    delivered = sum(len(c.alert_ids) for c in clients)
    total = round(args.alerts * args.seconds)
    return {
        "clients": n,
        "connected": connected[0],
        "connect_s": connect_seconds,
        "delivered": delivered,
        "expected": connected[0] * total,  # every client that was connected when the alerts came
        "complete": sum(len(c.alert_ids) == total for c in clients),
        "out_of_order": sum(c.out_of_order for c in clients),
        "duplicates": sum(c.duplicates for c in clients),
        "alert_frames": sum(c.alert_frames for c in clients),
        "window": window,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies, default=float("nan")),
        "market_per_client_s": sum(c.market_frames for c in clients) / max(1, n) / window,
        "closed": sum(c.closed_with is not None for c in clients),
        "close_codes": dict(Counter(str(c.closed_with) for c in clients if c.closed_with is not None)),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


def browser_frames(port: int, args) -> str:
    """The live page in Chromium (Playwright) while every symbol changes every second: the time each market
    table update takes in the page's script (`performance.now()` around it, `window.cryptomonRenders`), and
    what a background tab does (renders while hidden, and the one catch-up render when shown again)."""
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "browser: playwright is not installed (scripts/setup.sh with CRYPTOMON_SETUP_BROWSER=1)"
    if not chromium.exists():
        return "browser: no /usr/bin/chromium (scripts/setup.sh with CRYPTOMON_SETUP_BROWSER=1)"
    publisher = subprocess.Popen(
        [sys.executable, __file__, "--publish", str(args.symbols), "1", str(args.browser + 10)], cwd=ROOT
    )
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function(
                f"() => document.querySelectorAll('#market-table tbody tr').length >= {args.symbols}",
                timeout=60_000,
            )
            page.evaluate("() => { window.cryptomonRenders.length = 0; }")
            time.sleep(args.browser)
            renders = page.evaluate("() => [...window.cryptomonRenders]")
            hide = "(hidden) => { Object.defineProperty(document, 'hidden', {value: hidden, configurable: true});"
            hide += " document.dispatchEvent(new Event('visibilitychange')); window.cryptomonRenders.length = 0; }"
            page.evaluate(hide, True)
            time.sleep(5)
            hidden = page.evaluate("() => window.cryptomonRenders.length")
            page.evaluate(hide, False)
            page.wait_for_function("() => window.cryptomonRenders.length > 0")
            catch_up = page.evaluate("() => window.cryptomonRenders[0]")
            # The update alone, 40 times in a row, every row's price up: the fastest is the cost with the
            # least interference from the rest of the machine.
            direct = page.evaluate(
                """() => { const m = window.cryptomonMarket, times = [];
                for (let i = 1; i <= 40; i++) {
                  m.update([...m.rows.values()].map((r) => ({...r, price: r.price + i, change_5m: i / 7})));
                  const t = performance.now(); m.render(); times.push(performance.now() - t);
                } return times; }"""
            )
            browser.close()
    finally:
        publisher.terminate()
        publisher.wait()
    return (
        f"browser ({args.symbols} rows, every row changing every second, {len(renders)} updates in "
        f"{args.browser:g} s): update p50 {percentile(renders, 0.5):.1f} ms, p99 {percentile(renders, 0.99):.1f} ms, "
        f"max {max(renders, default=float('nan')):.1f} ms; background tab: {hidden} renders in 5 s, "
        f"then one catch-up render of {catch_up:.1f} ms; the update alone, 40 in a row: fastest "
        f"{min(direct):.1f} ms, median {percentile(direct, 0.5):.1f} ms; load {load_average()}"
    )


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1000")
    parser.add_argument("--layers", default="pubsub")
    parser.add_argument("--symbols", type=int, default=600, help="symbols with metrics.live every second")
    parser.add_argument("--alerts", type=float, default=50, help="alerts published per second")
    parser.add_argument("--seconds", type=float, default=60, help="how long alerts are published")
    parser.add_argument("--web-workers", type=int, default=2, help="daphne processes on one listening socket")
    parser.add_argument("--drain", type=float, default=15.0, help="seconds to wait for late deliveries")
    parser.add_argument("--ramp", type=int, default=20, help="new sockets per 100 ms while connecting")
    parser.add_argument(
        "--browser", type=float, default=20, help="seconds of the live page in Chromium (0: skip)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep daphne/run_gateway logs")
    parser.add_argument("--profile-web", help="write a cProfile of the (first) daphne process to this path")
    parser.add_argument("--publish", nargs=3, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        symbols, alerts, seconds = args.publish
        asyncio.run(publish(int(symbols), alerts, seconds, warmup=3.0, after=2.0))
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still stop the servers below
    var_dir = Path(tempfile.mkdtemp(prefix="cryptomon-bench-gateway-"))
    os.environ.update(
        CRYPTOMON_VAR_DIR=str(var_dir),
        DJANGO_SETTINGS_MODULE="cryptomon.settings",
        ALLOW_ANONYMOUS_DASHBOARD="true",
        # every simulated browser comes from 127.0.0.1: lift the per-address cap (docs/security.md)
        WS_MAX_ANONYMOUS_SOCKETS_PER_ADDRESS="1000000",
        LOG_LEVEL="WARNING",
    )
    from cryptomon import embedded

    started = embedded.configure_environment(var_dir, durable=False)
    results = []
    browser_line = ""
    try:
        import django

        django.setup()
        from django.core.management import call_command

        from gateway import serving

        call_command("migrate", verbosity=0)
        log = (var_dir / "servers.log").open("ab")
        for layer in args.layers.split(","):
            env = {**os.environ, "CHANNEL_LAYER": layer}
            port = embedded.free_port()
            listener = serving.listen("127.0.0.1", port)
            webs = []
            for n in range(args.web_workers):
                argv = serving.daphne_argv(listener, "-v", "0")
                if args.profile_web and n == 0:
                    argv[1:1] = ["-m", "cProfile", "-o", args.profile_web]
                webs.append(
                    subprocess.Popen(argv, cwd=ROOT, env=env, stderr=log, pass_fds=(listener.fileno(),))
                )
            gateway = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "run_gateway"], cwd=ROOT, env=env, stderr=log
            )
            try:
                wait_port(port)
                time.sleep(2)
                for n in (int(x) for x in args.clients.split(",")):
                    before = (
                        [cpu_seconds(web.pid) for web in webs],
                        cpu_seconds(gateway.pid),
                        time.process_time(),
                    )
                    load_before = load_average()
                    result = asyncio.run(run_clients(port, n, args)) | {"layer": layer}
                    web_cpu = sum(cpu_seconds(web.pid) for web in webs) - sum(before[0])
                    result["web_cpu"] = web_cpu
                    result["load"] = f"{load_before} → {load_average()}"
                    result["cpu"] = (
                        f"daphne ×{len(webs)} {web_cpu:.0f} s, "
                        f"run_gateway {cpu_seconds(gateway.pid) - before[1]:.0f} s, "
                        f"clients {time.process_time() - before[2]:.0f} s"
                    )
                    results.append(result)
                    print(summary(result, args), flush=True)
                if args.browser > 0:
                    browser_line = browser_frames(port, args)
                    print(browser_line, flush=True)
            finally:
                for process in (*webs, gateway):
                    process.terminate()
                    try:
                        process.wait(15)
                    except subprocess.TimeoutExpired:
                        process.kill()
                listener.close()
    finally:
        embedded.stop_servers(var_dir, started)
        if args.keep_logs:
            print(f"logs kept in {var_dir}")
        else:
            shutil.rmtree(var_dir, ignore_errors=True)
    print(
        f"\n{args.symbols} symbols, {args.alerts:g} alerts/s for {args.seconds:g} s, "
        f"{args.web_workers} daphne process(es)\n"
        "| layer | clients | connected (s) | delivered | complete sockets | order | p50 | p99 | max "
        "| market frames/client/s | closed | per web CPU-second | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['layer']} | {r['clients']} | {r['connected']} ({r['connect_s']:.0f} s) "
            f"| {r['delivered']}/{r['expected']} ({100 * r['delivered'] / max(1, r['expected']):.1f} %) "
            f"| {r['complete']} | {r['out_of_order']} out of order, {r['duplicates']} repeated "
            f"| {r['p50']:.0f} ms | {r['p99']:.0f} ms | {r['max']:.0f} ms | {r['market_per_client_s']:.2f} "
            f"| {r['closed']} {r['close_codes'] or ''} | {capacity(r)} | {r['load']} |"
        )
    if browser_line:
        print(f"\n{browser_line}")
    return 0


def capacity(r: dict) -> str:
    """What one core of daphne did: alert deliveries and frames (alert + market) per CPU-second."""
    cpu = max(r["web_cpu"], 0.01)
    frames = r["alert_frames"] + r["market_per_client_s"] * r["clients"] * r["window"]
    return f"{r['delivered'] / cpu:,.0f} alerts, {frames / cpu:,.0f} frames"


def summary(r: dict, args) -> str:
    return (
        f"{r['layer']:6} {r['clients']:5} clients (connected {r['connected']} in {r['connect_s']:.1f}s): "
        f"delivered {r['delivered']}/{r['expected']} ({100 * r['delivered'] / max(1, r['expected']):.1f} %), "
        f"{r['complete']} sockets complete, {r['out_of_order']} out of order, {r['duplicates']} repeated, "
        f"p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, max {r['max']:.0f} ms, "
        f"{r['alert_frames']} alert frames, market {r['market_per_client_s']:.2f} frames/client/s, "
        f"closed {r['closed']} {r['close_codes'] or ''}; CPU: {r['cpu']}; per web CPU-second: {capacity(r)}; "
        f"load {r['load']}"
    )


if __name__ == "__main__":
    sys.exit(main())
