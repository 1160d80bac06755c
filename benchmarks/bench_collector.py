"""Collector benchmarks (docs/collector.md).

1. Parse + validate rate of kline frames on one core, against a plain `orjson.loads` of the same frames.
2. End to end (needs the emulator and NATS): the emulator streams N symbols at 250 ms into the collector,
   which publishes finals to JetStream; reports frames/s handled, CPU use of this process, and the latency
   from each minute's close (venue time) to the JetStream acknowledgement, p50/p99.

    .venv/bin/python benchmarks/bench_collector.py [--parse-only] [--symbols 600] [--seconds 60] [--speed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
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


async def bench_end_to_end(symbols: int, seconds: float, speed: float) -> dict:
    """Emulator → collector → JetStream on this machine's embedded NATS/PostgreSQL."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptomon.settings")
    if not os.environ.get("DATABASE_URL"):
        from cryptomon import embedded
        from cryptomon.contract import subjects

        var_dir = Path(tempfile.mkdtemp(prefix="cryptomon-bench-"))
        os.environ["CRYPTOMON_VAR_DIR"] = str(var_dir)
        embedded.configure_environment(var_dir, durable=False)
    import django

    django.setup()
    from django.core.management import call_command

    await asyncio.to_thread(call_command, "migrate", verbosity=0)
    await asyncio.to_thread(call_command, "migrate", database="timeseries", verbosity=0)

    from collector.emulator import EmulatorServer
    from collector.worker import Collector, CollectorConfig
    from cryptomon import messaging

    names = [f"B{i:03d}USDT" for i in range(symbols)]
    async with EmulatorServer(symbols=names, speed=speed) as emu:
        nc = await messaging.connect("bench")
        js = nc.jetstream()
        for name in subjects.STREAMS:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await messaging.ensure_streams(js)
        config = CollectorConfig.from_settings(
            rest_url=emu.rest_url,
            ws_url=emu.ws_url,
            clock_rate=speed,
            warmup_minutes=5,
            hole_scan_seconds=3600,
            stagger_seconds=0.05,
        )
        collector = Collector(config)
        latencies: list[float] = []

        task = asyncio.create_task(collector.run())
        await asyncio.wait_for(collector.started.wait(), 60)
        publisher = collector.publisher
        base_published = publisher._published

        def published(candle) -> None:
            base_published(candle)
            if candle.source == "ws":
                latencies.append(collector.rest.venue_now_ms() - (candle.close_time + 1))

        publisher._published = published
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        frames0 = collector.stats.total("collector_frames_total")
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - started
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        frames = collector.stats.total("collector_frames_total") - frames0
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
        "symbols": symbols,
        "seconds": elapsed,
        "frames_per_s": frames / elapsed,
        "cpu_percent_of_one_core": cpu * 100,
        "finals_published_ws": len(latencies),
        "close_to_ack_p50_ms": pct(0.5),
        "close_to_ack_p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(latencies) / speed if latencies else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parse-only", action="store_true")
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--symbols", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--speed", type=float, default=1.0)
    args = parser.parse_args()
    result = bench_parse(args.frames)
    print(
        f"parse+validate: {result['parse_validate_per_s']:,.0f} frames/s on one core; "
        f"plain orjson.loads: {result['orjson_loads_per_s']:,.0f} frames/s; "
        f"ratio {result['ratio']:.2f} ({result['frames']:,} frames)"
    )
    if args.parse_only:
        return
    e2e = asyncio.run(bench_end_to_end(args.symbols, args.seconds, args.speed))
    print(
        f"end to end: {e2e['symbols']} symbols for {e2e['seconds']:.0f} s: {e2e['frames_per_s']:,.0f} frames/s, "
        f"CPU {e2e['cpu_percent_of_one_core']:.0f}% of one core (collector + emulator in this process), "
        f"{e2e['finals_published_ws']} live finals; minute close → JetStream ack "
        f"p50 {e2e['close_to_ack_p50_ms']:.0f} ms, p99 {e2e['close_to_ack_p99_ms']:.0f} ms "
        "(includes the venue's ~2 s final delay)"
    )


if __name__ == "__main__":
    main()
