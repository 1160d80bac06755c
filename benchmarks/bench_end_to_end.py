"""End-to-end latency: the emulator sends a minute's final kline → the alert arrives at a browser's socket.

The whole product runs as separate processes on private servers (tests/e2e_system.py), with the emulator
at Binance's real cadence (speed 1: every symbol updates every 250 ms, 600 symbols = 2,400 frames/s). This
process is the measuring client: it listens to the kline streams of a few symbols spread over the market
(`--watch`, 20 by default) to learn when each minute's finals are sent (the emulator sends all of a minute's
finals in one tick with one `E`, host clock; the spread within the watched symbols is printed, and a symbol
not watched is timed from the earliest `E` of its minute, which can only overstate its latency) and holds a
`/ws/alerts/` socket (docs/contract.md §10). Watching all 600 (`--watch 600`) makes this client parse 2,400 frames/s,
600 of them at the very moment the burst starts, on the same two cores as the product. A global rule that is true for about half of the symbols on
every bar (`change_5m > 0`, cooldown 0) makes each minute close produce a burst of alerts in the same
second, the worst case for the pipeline. Reported: latency p50/p95/p99/max per alert, CPU seconds and
peak memory of every process over the measured minutes, the load generators (emulator and this client)
separately.

    .venv/bin/python benchmarks/bench_end_to_end.py [--symbols 600] [--minutes 4] [--watch 20]
        [--profile alerts,collector]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptomon.settings")

import websockets  # noqa: E402

from benchmarks.soak import children, rss_mib  # noqa: E402
from tests.e2e_system import System, wait_until  # noqa: E402

RULE = ("bench-half-market", "change_5m > 0", 0)


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for candidate in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{candidate}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def profile(name: str, pid: int, minutes: float) -> subprocess.Popen:
    """py-spy on one process for the measured minutes (idle time left out: where the CPU goes)."""
    out = ROOT / "var" / "profile" / f"{name}.svg"
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    command = [str(py_spy), "record", "--pid", str(pid), "--duration", str(int(minutes * 60))]
    command += ["--rate", "250", "--subprocesses", "--output", str(out)]
    print(f"profiling {name} (pid {pid}) into {out}", flush=True)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def watch_finals(system: System, symbols: list[str], finals: dict, stop: asyncio.Event) -> None:
    """Record when each (symbol, open_time) final kline left the emulator, 200 streams a connection."""

    async def one(chunk: list[str]) -> None:
        streams = "/".join(f"{s.lower()}@kline_1m" for s in chunk)
        url = f"ws://127.0.0.1:{system.emulator_port}/market/stream?streams={streams}"
        async with websockets.connect(url, max_size=None, open_timeout=30) as socket:
            while not stop.is_set():
                try:
                    raw = await asyncio.wait_for(socket.recv(), 1)
                except TimeoutError:
                    continue
                received = time.time()
                data = json.loads(raw)["data"]
                kline = data["k"]
                if kline["x"]:
                    # E: when the emulator sent it (its clock is the host's at speed 1); the client's own
                    # receive time is later by however long this process took to get to the frame
                    finals.setdefault((kline["s"], kline["t"]), (data["E"] / 1000, received))

    await asyncio.gather(*(one(symbols[i : i + 200]) for i in range(0, len(symbols), 200)))


async def watch_alerts(system: System, arrivals: dict, stop: asyncio.Event) -> None:
    origin = f"http://127.0.0.1:{system.web_port}"
    async with websockets.connect(system.ws_url, origin=origin, max_size=None) as socket:
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(socket.recv(), 1)
            except TimeoutError:
                continue
            received = time.time()
            frame = json.loads(raw)
            batch = [frame["alert"]] if frame.get("type") == "alert" else []
            if frame.get("type") == "alerts":  # several ready at the same moment (§10)
                batch = frame["alerts"]
            for alert in batch:
                arrivals.setdefault(
                    (alert["symbol"], alert["open_time"]), (received, alert["triggered_at"] / 1000)
                )


STAGES = (("CANDLES", "candles.1m.>"), ("METRICS", "metrics.calculated.>"), ("ALERTS", "alerts.triggered.>"))


STAGE_CLOCKS = {"socket": "", "collector received": ", the candle's event_time"}


async def stored_times(system: System, keys: set) -> dict[str, dict]:
    """When JetStream stored each stage's message of (symbol, open_time) (its own clock, the host's):
    read back after measuring, so splitting the latency by process adds no load while it is measured."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(system.servers["nats"]["url"])
    stages: dict[str, dict] = {}
    received: dict = {}
    sources: dict[str, int] = {}
    try:
        js = nc.jetstream()
        for stream, subject in STAGES:
            seen: dict = {}
            config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL)
            subscription = await js.pull_subscribe(subject, stream=stream, config=config)
            while True:
                try:
                    messages = await subscription.fetch(1000, timeout=2)
                except TimeoutError:
                    break
                for message in messages:
                    payload = json.loads(message.data)
                    key = (payload["symbol"], payload["open_time"])
                    if key in keys:
                        seen.setdefault(key, message.metadata.timestamp.timestamp())
                        if stream == "CANDLES":  # the collector's receive time (venue clock = host's)
                            received.setdefault(key, payload["event_time"] / 1000)
                            sources[payload["source"]] = sources.get(payload["source"], 0) + 1
            await subscription.unsubscribe()
            if stream == "CANDLES":
                stages["collector received"] = received
            stages[subject.removesuffix(".>")] = seen
    finally:
        await nc.close()
    print(f"measured candles by source: {sources}")
    return stages


async def measure(system: System, symbols: list[str], minutes: float) -> tuple[dict, dict, dict]:
    finals: dict = {}
    arrivals: dict = {}
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(watch_finals(system, symbols, finals, stop)),
        asyncio.create_task(watch_alerts(system, arrivals, stop)),
    ]
    await asyncio.sleep(minutes * 60)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(5)  # the last minute's alerts are stored before the read-back
    return finals, arrivals, await stored_times(system, set(arrivals))


def print_timeline(sent: dict, stages: dict, sockets: dict) -> None:
    """When each stage had the first, the median and the last message of a minute's burst, counted from the
    burst's first final kline sent: shows whether the stages overlap (a pipeline) or take turns."""
    bursts: dict[int, float] = {}
    for (_, open_time), at in sent.items():
        bursts[open_time] = min(at, bursts.get(open_time, at))
    print("  timeline of a burst (ms after its first final was sent; first / median / last, median burst):")
    for stage, seen in (("final sent", sent), *stages.items(), ("socket", sockets)):
        marks: list[tuple[float, float, float]] = []
        for open_time, start in bursts.items():
            offsets = sorted((at - start) * 1000 for key, at in seen.items() if key[1] == open_time)
            if len(offsets) > 1:
                marks.append((offsets[0], offsets[len(offsets) // 2], offsets[-1]))
        if marks:
            first, median, last = (sorted(column)[len(column) // 2] for column in zip(*marks, strict=True))
            print(f"    {stage:<20} {first:6.0f} {median:6.0f} {last:6.0f}  (n={len(marks)} bursts)")
    lasts = [
        f"{time.strftime('%H:%M', time.localtime(start))} {max((sockets[k] - start) * 1000 for k in sockets if k[1] == t):.0f}"
        for t, start in sorted(bursts.items())
        if any(k[1] == t for k in sockets)
    ]
    print(f"  last alert of each burst at the socket (ms): {', '.join(lasts)}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=600)
    parser.add_argument("--minutes", type=float, default=4)
    parser.add_argument("--warmup-minutes", type=float, default=3)
    parser.add_argument(
        "--watch", type=int, default=20, help="symbols whose kline streams this client reads for send times"
    )
    parser.add_argument(
        "--profile",
        default="",
        help="comma-separated processes (collector,metrics,alerts,gateway) to sample with py-spy while "
        "measuring; flame graphs go to var/profile/<process>.svg",
    )
    args = parser.parse_args()
    symbols = [f"E{i:03d}USDT" for i in range(args.symbols)]
    step = max(1, len(symbols) // max(1, args.watch))
    watched = symbols[::step][: args.watch] if args.watch else symbols
    system = System(
        Path(tempfile.mkdtemp(prefix="cryptomon-bench-e2e-")),
        symbols=symbols,
        speed=1.0,
        emulator_args=["--history-minutes", "30"],
        fast_upkeep=False,  # the product's own upkeep intervals, as deployed
    )
    try:
        system.start_servers()
        slug, expression, cooldown = RULE
        system.manage(
            "shell",
            "-c",
            "from alerts.models import AlertRule; AlertRule.objects.filter(owner=None).update(enabled=False); "
            f"AlertRule.objects.create(slug={slug!r}, name={slug!r}, expression={expression!r}, "
            f"cooldown_seconds={cooldown})",
        )
        system.start_all()
        print(f"warming up {args.warmup_minutes} min (backfill, first bars)...", flush=True)
        wait_until(lambda: system.sql("SELECT count(*) FROM alert_history")[0][0] > 0, "first alerts", 600, 2)
        time.sleep(args.warmup_minutes * 60)
        system.assert_running()
        pids = {name: p.popen.pid for name, p in system.processes.items()}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        profilers = [
            profile(name, pids[name], args.minutes) for name in filter(None, args.profile.split(","))
        ]
        own_before = time.process_time()
        started = time.monotonic()
        peak = dict.fromkeys(pids, 0.0)

        async def run() -> tuple[dict, dict, dict]:
            async def sample() -> None:
                while True:
                    for name, pid in pids.items():
                        peak[name] = max(peak[name], rss_mib(pid))
                    await asyncio.sleep(5)

            sampler = asyncio.create_task(sample())
            try:
                return await measure(system, watched, args.minutes)
            finally:
                sampler.cancel()

        finals, arrivals, stages = asyncio.run(run())
        elapsed = time.monotonic() - started
        own_cpu = time.process_time() - own_before
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        system.assert_running()
        for profiler in profilers:
            profiler.wait(60)
    finally:
        system.stop()
    bursts: dict[int, list[float]] = {}
    for (_, open_time), (e_time, _) in finals.items():
        bursts.setdefault(open_time, []).append(e_time)
    spread = max((max(times) - min(times)) * 1000 for times in bursts.values()) if bursts else 0.0
    sent = {
        key: finals[key][0] if key in finals else min(bursts[key[1]]) for key in arrivals if key[1] in bursts
    }
    matched = [key for key in arrivals if key in sent and arrivals[key][0] >= sent[key]]
    latencies = [(arrivals[key][0] - sent[key]) * 1000 for key in matched]
    decided = [(arrivals[key][1] - sent[key]) * 1000 for key in matched]  # run_alerts' triggered_at
    client_late = [(finals[key][1] - sent[key]) * 1000 for key in matched if key in finals]
    print(f"machine: {os.cpu_count()} cores; {args.symbols} symbols at speed 1 (2,400 frames/s at 600)")
    print(
        f"measured {elapsed:.0f} s: {len(finals)} final klines of {len(watched)} watched symbols, "
        f"{len(arrivals)} alerts, {len(latencies)} matched; a minute's finals sent within {spread:.0f} ms"
    )
    if latencies:
        print(
            "final kline sent (E) -> alert at the socket: "
            + ", ".join(f"p{q} {percentile(latencies, q):.0f} ms" for q in (50, 95, 99))
            + f", max {max(latencies):.0f} ms"
        )
        print(
            "  of which final kline sent -> alert decided (collector, metrics, alerts): "
            + ", ".join(f"p{q} {percentile(decided, q):.0f} ms" for q in (50, 95, 99))
        )
        if client_late:
            print(
                "  (a watched symbol's final reached this client's kline sockets after "
                + ", ".join(f"p{q} {percentile(client_late, q):.0f} ms" for q in (50, 95, 99))
                + ")"
            )
        previous = sent
        for stage in ("collector received", *(subject.removesuffix(".>") for _, subject in STAGES), "socket"):
            seen = {key: arrivals[key][0] for key in matched} if stage == "socket" else stages[stage]
            steps = [(seen[key] - previous[key]) * 1000 for key in matched if key in seen and key in previous]
            if steps:
                print(
                    f"  stage -> {stage:<20} "
                    + ", ".join(f"p{q} {percentile(steps, q):.0f} ms" for q in (50, 95, 99))
                    + f" (n={len(steps)}{STAGE_CLOCKS.get(stage, ', JetStream stored time')})"
                )
            previous = seen
        print_timeline(sent, stages, {key: arrivals[key][0] for key in matched})
    print("process      CPU (% of one core)   peak RSS (MiB)")
    for name in pids:
        role = " (load generator)" if name == "emulator" else ""
        print(f"{name:<12} {cpu[name] / elapsed * 100:6.1f}               {peak[name]:7.0f}{role}")
    print(
        f"{'client':<12} {own_cpu / elapsed * 100:6.1f}                     - (load generator: this process)"
    )
    return 0 if latencies else 1


if __name__ == "__main__":
    raise SystemExit(main())
