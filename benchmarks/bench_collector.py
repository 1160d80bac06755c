"""Collector benchmarks (docs/collector.md).

1. Parse + validate rate of kline frames on one core, against a plain `orjson.loads` of the same frames.
2. End to end (needs the emulator and NATS): the emulator streams N symbols at 250 ms into the collector,
   which publishes finals to JetStream; reports frames/s handled, CPU use of this process, and the latency
   from each minute's close (venue time) to the JetStream acknowledgement, p50/p99.

    .venv/bin/python benchmarks/bench_collector.py [--parse-only] [--symbols 600] [--seconds 60] [--speed 1]
                                                 [--derivatives on|off|compare]

With `--derivatives compare` (the default) the same run measures the collector without and with the
derivatives streams and polls, alternating (off, on, off, on) on one emulator process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

# CRYPTOMON_BENCH_ROOT runs another checkout's code (e.g. the main branch, for a before/after figure)
ROOT = Path(os.environ.get("CRYPTOMON_BENCH_ROOT") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))

from collector.binance import parse_frame  # noqa: E402
from cryptomon.contract.times import MINUTE_MS  # noqa: E402

T0 = 1_767_225_600_000


def recorded_frames(count: int, symbols: list[str]) -> list[bytes]:
    """Frames shaped like Binance's (the fields, types and decimal strings of a real kline event)."""
    rng = random.Random(7)
    frames = []
    for index in range(count):
        symbol = symbols[index % len(symbols)]
        t = T0 + (index // len(symbols) // 240) * MINUTE_MS
        price = 100 + rng.random()
        low, high = price * 0.99, price * 1.01
        k = {
            "t": t,
            "T": t + MINUTE_MS - 1,
            "s": symbol,
            "i": "1m",
            "f": 5_000_000 + index,
            "L": 5_000_100 + index,
            "o": f"{price:.4f}",
            "c": f"{price * 1.001:.4f}",
            "h": f"{high:.4f}",
            "l": f"{low:.4f}",
            "v": f"{rng.random() * 1000:.3f}",
            "n": rng.randrange(1, 500),
            "x": index % 240 == 239,
            "q": f"{rng.random() * 100000:.5f}",
            "V": f"{rng.random() * 500:.3f}",
            "Q": f"{rng.random() * 50000:.5f}",
            "B": "0",
        }
        event = {"e": "kline", "E": t + 1234, "s": symbol, "k": k}
        frames.append(msgspec.json.encode({"stream": f"{symbol.lower()}@kline_1m", "data": event}))
    return frames


def bench_parse(count: int = 200_000) -> dict:
    import orjson

    symbols = [f"SYM{i}USDT" for i in range(600)]
    known = frozenset(symbols)
    frames = recorded_frames(count, symbols)
    best_plain = best_ours = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for frame in frames:
            orjson.loads(frame)
        best_plain = min(best_plain, time.perf_counter() - started)
        started = time.perf_counter()
        for frame in frames:
            parse_frame(frame, known)
        best_ours = min(best_ours, time.perf_counter() - started)
    invalid = sum(1 for frame in frames[:1000] if parse_frame(frame, known).kind != "kline")
    assert invalid == 0
    return {
        "frames": count,
        "parse_validate_per_s": count / best_ours,
        "orjson_loads_per_s": count / best_plain,
        "ratio": best_plain / best_ours,
    }


def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptomon.settings")
    if not os.environ.get("DATABASE_URL"):
        from cryptomon import embedded

        var_dir = Path(tempfile.mkdtemp(prefix="cryptomon-bench-"))
        os.environ["CRYPTOMON_VAR_DIR"] = str(var_dir)
        embedded.configure_environment(var_dir, durable=False)
    import django

    django.setup()


@contextlib.contextmanager
def emulator_process(symbols: int, speed: float):
    """`run_emulator` in its own process, so this process's CPU is the collector's alone."""
    url_file = Path(tempfile.mkdtemp(prefix="cryptomon-bench-emu-")) / "urls.env"
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "run_emulator",
            "--port",
            "0",
            "--symbols",
            str(symbols),
            "--speed",
            str(speed),
            "--url-file",
            str(url_file),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (url_file.exists() and "BINANCE_WS_URL" in url_file.read_text()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("run_emulator did not start")
            time.sleep(0.1)
        urls = dict(line.split("=", 1) for line in url_file.read_text().split())
        yield urls["BINANCE_REST_URL"], urls["BINANCE_WS_URL"]
    finally:
        process.terminate()
        process.wait(30)


async def bench_end_to_end(
    rest_url: str, ws_url: str, symbols: int, seconds: float, speed: float, derivatives: bool | None
) -> dict:
    """Emulator (another process) → collector → JetStream on this machine's embedded NATS/PostgreSQL."""
    from django.core.management import call_command

    await asyncio.to_thread(call_command, "migrate", verbosity=0)
    await asyncio.to_thread(call_command, "migrate", database="timeseries", verbosity=0)

    from collector.worker import Collector, CollectorConfig
    from cryptomon import messaging
    from cryptomon.contract import subjects

    nc = await messaging.connect("bench")
    js = nc.jetstream()
    for name in subjects.STREAMS:
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
    await messaging.ensure_streams(js)
    config = CollectorConfig.from_settings(
        rest_url=rest_url,
        ws_url=ws_url,
        clock_rate=speed,
        warmup_minutes=5,
        hole_scan_seconds=3600,
        stagger_seconds=0.05,
        **({} if derivatives is None else {"derivatives": derivatives}),
    )
    collector = Collector(config)
    latencies: list[float] = []

    task = asyncio.create_task(collector.run())
    await asyncio.wait_for(collector.started.wait(), 60)
    while collector.sequencer.backfilling():  # measure the steady state, not the start-up backfill
        await asyncio.sleep(0.5)
    await asyncio.sleep(5)
    publisher = collector.publisher
    base_published = publisher._published

    def published(candle) -> None:
        base_published(candle)
        if candle.source == "ws":
            latencies.append(collector.rest.venue_now_ms() - (candle.close_time + 1))

    publisher._published = published
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    frames0 = collector.stats.total("collector_frames_total")
    load0 = os.getloadavg()[0]
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    frames = collector.stats.total("collector_frames_total") - frames0
    liquidations = collector.stats.total("collector_liquidations_total")
    collector.stop()
    await task
    await nc.close()
    cpu = (usage1.ru_utime - usage0.ru_utime + usage1.ru_stime - usage0.ru_stime) / elapsed
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))] / speed if latencies else float("nan")
        )

    return {
        "derivatives": derivatives,
        "symbols": symbols,
        "seconds": elapsed,
        "frames_per_s": frames / elapsed,
        "cpu_percent_of_one_core": cpu * 100,
        "finals_published_ws": len(latencies),
        "liquidations": liquidations,
        "close_to_ack_p50_ms": pct(0.5),
        "close_to_ack_p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(latencies) / speed if latencies else float("nan"),
        "load_average_1m": (load0 + os.getloadavg()[0]) / 2,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parse-only", action="store_true")
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--symbols", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument(
        "--derivatives",
        choices=("on", "off", "compare", "default"),
        default="compare",
        help="markPrice/forceOrder streams and open interest polls: on, off, both (off, on, off, on), or the "
        "code's default (for a checkout that predates them)",
    )
    args = parser.parse_args()
    result = bench_parse(args.frames)
    print(
        f"parse+validate: {result['parse_validate_per_s']:,.0f} frames/s on one core; "
        f"plain orjson.loads: {result['orjson_loads_per_s']:,.0f} frames/s; "
        f"ratio {result['ratio']:.2f} ({result['frames']:,} frames)"
    )
    if args.parse_only:
        return
    modes = {"on": [True], "off": [False], "compare": [False, True, False, True], "default": [None]}[
        args.derivatives
    ]
    _django()
    with emulator_process(args.symbols, args.speed) as (rest_url, ws_url):
        for derivatives in modes:
            e2e = asyncio.run(
                bench_end_to_end(rest_url, ws_url, args.symbols, args.seconds, args.speed, derivatives)
            )
            print(
                f"end to end, derivatives {({True: 'on ', False: 'off', None: 'n/a'})[derivatives]}: {e2e['symbols']} symbols for "
                f"{e2e['seconds']:.0f} s: {e2e['frames_per_s']:,.0f} frames/s, collector CPU "
                f"{e2e['cpu_percent_of_one_core']:.1f}% of one core (the emulator runs in its own process), "
                f"{e2e['finals_published_ws']} live finals, {e2e['liquidations']} liquidations; minute close → "
                f"JetStream ack p50 {e2e['close_to_ack_p50_ms']:.0f} ms, p99 {e2e['close_to_ack_p99_ms']:.0f} ms "
                f"(includes the venue's ~2 s final delay); load average {e2e['load_average_1m']:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
