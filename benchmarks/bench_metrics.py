"""Metrics engine benchmarks (docs/metrics.md).

1. Replay: 600 symbols × 2 days (2880 minutes, 1.73 million candles) through `metrics.replay` on one core;
   candles/s end to end (including creating the Candle objects, as a backtest does) and for the engine
   alone, peak memory (RSS) and the memory the 600 symbol states keep. Bars compute their metrics when
   read, so the rate is also taken (on a sample of symbols) with every bar's 57 metrics read, as live
   publishing and storage do, and for the real backtest of the 10 presets (`alerts.backtest.evaluate`:
   replay, the names the rules reference, the numpy decisions).
2. The same metrics recomputed with pandas rolling windows in the same run (if pandas is installed), as a
   ratio. pandas sums volumes as floats and seeds RSI/EMA its own way: it is a speed yardstick, not a check.
3. Live (`--live`, starts its own PostgreSQL and NATS): `run_metrics` as a subprocess, 600 symbols closing in
   the same second for several minutes; the time from each candle's JetStream acknowledgement to its
   `metrics.calculated` message, p50/p99.

    .venv/bin/python benchmarks/bench_metrics.py [--symbols 600] [--minutes 2880] [--sample 100] [--no-pandas]
        [--derivatives] [--live | --live-only]

`--derivatives` runs the replay and the read-every-metric pass twice in the same process: candles without
and with the §7b fields (mark, index, funding, open interest, liquidations on every candle), so the cost of
the derivatives metrics is a ratio taken under the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alerts.presets import PRESETS  # noqa: E402
from cryptomon.contract.candles import Candle, Derivatives  # noqa: E402
from cryptomon.contract.names import METRIC_NAMES  # noqa: E402
from metrics.replay import replay  # noqa: E402
from metrics.windows import SymbolState  # noqa: E402

T0 = 1_767_225_600_000
MINUTE = 60_000


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 / 1024


def market(symbols: int, minutes: int, seed: int = 1, derivatives: bool = False) -> Iterator[Candle]:
    """A random-walk market, minute by minute across symbols (as merged input arrives), ~1% zero-volume;
    with `derivatives` every candle carries the §7b fields (liquidations on ~5% of minutes)."""
    if derivatives:
        yield from _with_derivatives(market(symbols, minutes, seed))
        return
    rng = random.Random(seed)
    prices = [10 ** rng.uniform(-3, 4.5) for _ in range(symbols)]
    sizes = [10 ** rng.uniform(3, 7) for _ in range(symbols)]
    names = [f"SYM{i:03d}USDT" for i in range(symbols)]
    gauss, rand = rng.gauss, rng.random
    for minute in range(minutes):
        t = T0 + minute * MINUTE
        for i in range(symbols):
            o = prices[i]
            c = o * (1 + gauss(0, 0.002))
            prices[i] = c
            q = 0 if rand() < 0.01 else int(sizes[i] * (0.2 + rand()) * 1e8)
            yield Candle(
                names[i], t, t + 59_999, o, max(o, c) * 1.001, min(o, c) * 0.999, c,
                q // 100, q, int(q / 1e10), q // 100 // 2, q // 2, t + 61_000, "ws",
            )  # fmt: skip


def _with_derivatives(candles: Iterator[Candle]) -> Iterator[Candle]:
    rng = random.Random(2)
    rand = rng.random
    for c in candles:
        x = c.close
        liquidated = rand() < 0.05
        c.derivatives = Derivatives(
            x * 1.0002, x, 0.0001, 8.0, c.open_time + 3_600_000, 1e6 * (1 + rand() * 0.01),
            int(x * 1e8 * rand() * 100) if liquidated else 0, 0, 1 if liquidated else 0,
        )  # fmt: skip
        yield c


def bench_replay(symbols: int, minutes: int, derivatives: bool = False) -> dict:
    gc.collect()
    base = current_rss_mb()
    started = time.process_time()
    for _ in market(symbols, minutes, derivatives=derivatives):
        pass
    creation = time.process_time() - started

    states: dict[str, SymbolState] = {}
    before = current_rss_mb()
    started = time.process_time()
    count = 0
    for _bar in replay(market(symbols, minutes, derivatives=derivatives), states=states):
        count += 1
    total = time.process_time() - started
    after = current_rss_mb()
    return {
        "candles": count,
        "seconds": total,
        "per_second": count / total,
        "engine_per_second": count / max(total - creation, 1e-9),
        "creation_seconds": creation,
        "peak_rss_mb": rss_mb(),
        "base_rss_mb": base,
        "states_mb": after - before,
    }


def bench_reading(symbols: int, minutes: int, derivatives: bool = False) -> dict:
    """Engine seconds per candle with every bar's metrics read, and the presets' backtest, per candle."""
    from alerts.backtest import evaluate
    from alerts.presets import preset_specs

    started = time.process_time()
    for _ in market(symbols, minutes, derivatives=derivatives):
        pass
    creation = time.process_time() - started
    started = time.process_time()
    count = 0
    for bar in replay(market(symbols, minutes, derivatives=derivatives)):
        bar.metrics_dict()
        count += 1
    full = (time.process_time() - started - creation) / count

    per_symbol: dict[str, list[Candle]] = {}
    for candle in market(symbols, minutes, derivatives=derivatives):
        per_symbol.setdefault(candle.symbol, []).append(candle)
    rules = preset_specs()
    started = time.process_time()
    alerts = sum(len(evaluate(symbol, candles, rules)) for symbol, candles in per_symbol.items())
    backtest = (time.process_time() - started) / count
    return {"full": full, "backtest": backtest, "alerts": alerts}


def bench_pandas(symbols: int, minutes: int) -> float | None:
    """Seconds for pandas to compute the same window metrics and indicators for every bar."""
    try:
        import numpy as np
        import pandas as pd
    except ImportError:
        return None
    rows = [
        (c.open, c.high, c.low, c.close, c.quote_volume, c.trades, c.taker_buy_quote_volume)
        for c in market(symbols, minutes)
    ]
    data = np.array(rows, dtype=float).reshape(minutes, symbols, 7)
    del rows
    started = time.process_time()
    for i in range(symbols):
        frame = pd.DataFrame(data[:, i, :], columns=["o", "h", "l", "c", "q", "n", "tq"])
        out = {}
        for name, n in (("5m", 5), ("15m", 15), ("1h", 60), ("4h", 240), ("8h", 480), ("1d", 1440)):
            opened = frame["o"].shift(n - 1)
            volume = frame["q"].rolling(n).sum()
            out[f"open_{name}"] = opened
            out[f"high_{name}"] = frame["h"].rolling(n).max()
            out[f"low_{name}"] = frame["l"].rolling(n).min()
            out[f"change_{name}"] = (frame["c"] - opened) / opened * 100
            out[f"volume_{name}"] = volume
            out[f"volume_ratio_{name}"] = volume / volume.shift(n)
            out[f"trades_{name}"] = frame["n"].rolling(n).sum()
            out[f"taker_buy_ratio_{name}"] = frame["tq"].rolling(n).sum() / volume
        delta = frame["c"].diff()
        gain = delta.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
        loss = (-delta).clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
        out["rsi_14"] = 100 - 100 / (1 + gain / loss)
        macd = frame["c"].ewm(span=12, adjust=False).mean() - frame["c"].ewm(span=26, adjust=False).mean()
        signal_line = macd.ewm(span=9, adjust=False).mean()
        out["macd"], out["macd_signal"], out["macd_hist"] = macd, signal_line, macd - signal_line
        middle = frame["c"].rolling(20).mean()
        deviation = frame["c"].rolling(20).std(ddof=0)
        out["bb_middle"], out["bb_upper"], out["bb_lower"] = (
            middle,
            middle + 2 * deviation,
            middle - 2 * deviation,
        )
        spread = frame["h"] - frame["l"]
        out["vcp"] = (
            (frame["c"] / ((frame["o"] + frame["c"]) / 2))
            * ((frame["c"] - frame["l"]) - (frame["h"] - frame["c"]))
            / spread.where(spread != 0)
        )
        pd.DataFrame(out)
    return time.process_time() - started


# --- live -------------------------------------------------------------------------------------------------


async def live_latency(symbols: int, warm_minutes: int, measured_minutes: int) -> dict:
    import msgspec

    from cryptomon import messaging
    from cryptomon.contract import subjects

    nc, js = await messaging.connect_jetstream("bench-metrics")
    names = [f"SYM{i:03d}USDT" for i in range(symbols)]
    acked: dict[tuple[str, int], float] = {}
    latencies: list[float] = []
    by_minute: dict[int, list[float]] = {}
    warm, done = asyncio.Event(), asyncio.Event()
    seen = 0

    async def on_bar(message):
        nonlocal seen
        payload = msgspec.json.decode(message.data)
        key = (payload["symbol"], payload["open_time"])
        sent = acked.pop(key, None)
        if sent is not None and payload["open_time"] >= T0 + warm_minutes * MINUTE:
            latencies.append(time.perf_counter() - sent)
            by_minute.setdefault(payload["open_time"], []).append(latencies[-1])
        seen += 1
        if seen >= symbols * warm_minutes:
            warm.set()
        if seen >= symbols * (warm_minutes + measured_minutes):
            done.set()

    await nc.subscribe("metrics.calculated.>", cb=on_bar)
    stream = market(symbols, warm_minutes + measured_minutes, seed=3)
    for minute in range(warm_minutes + measured_minutes):
        batch = [next(stream) for _ in names]
        futures = []
        for candle in batch:
            futures.append(
                await js.publish_async(
                    subjects.candle_subject(candle.symbol),
                    msgspec.json.encode(candle.payload()),
                    headers={"Nats-Msg-Id": f"{candle.symbol}:{candle.open_time}"},
                )
            )
        for candle, future in zip(batch, futures, strict=True):
            await future
            acked[(candle.symbol, candle.open_time)] = time.perf_counter()
        if minute == warm_minutes - 1:
            await asyncio.wait_for(warm.wait(), 600)
            await asyncio.wait_for(_stored(symbols * warm_minutes), 600)  # history in place: now the closes
        if minute >= warm_minutes:
            await asyncio.sleep(1.0)  # one close per second: each minute's 600 symbols in the same second
    await asyncio.wait_for(done.wait(), 300)
    await nc.close()
    latencies.sort()
    return {
        "bars": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "max_ms": latencies[-1] * 1000,
        "minute_p50_ms": [round(statistics.median(v) * 1000) for _, v in sorted(by_minute.items())],
        "minute_max_ms": [round(max(v) * 1000) for _, v in sorted(by_minute.items())],
    }


async def _stored(bars: int) -> None:
    """Wait until the worker has committed the warm-up's bars (publishing runs ahead of the commits)."""
    from django.db import connections

    def count() -> int:
        with connections["timeseries"].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM metrics_calculated WHERE timeframe = '1d'")
            return cursor.fetchone()[0]

    while await asyncio.to_thread(count) < bars:
        await asyncio.sleep(0.2)


def bench_live(symbols: int) -> dict:
    var_dir = Path(tempfile.mkdtemp(prefix="cryptomon-bench-metrics-"))
    os.environ.update(
        CRYPTOMON_VAR_DIR=str(var_dir), DJANGO_SETTINGS_MODULE="cryptomon.settings", LOG_LEVEL="WARNING"
    )
    from cryptomon import embedded

    started = embedded.configure_environment(var_dir, durable=False)
    worker = None
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        log = (var_dir / "run_metrics.log").open("ab")
        worker = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "run_metrics"], cwd=ROOT, stderr=log
        )
        time.sleep(3)
        return asyncio.run(live_latency(symbols, warm_minutes=30, measured_minutes=10))
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
        embedded.stop_servers(var_dir, started)
        shutil.rmtree(var_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=600)
    parser.add_argument("--minutes", type=int, default=2880)
    parser.add_argument("--sample", type=int, default=100, help="symbols for the read-every-metric passes")
    parser.add_argument("--no-pandas", action="store_true")
    parser.add_argument("--derivatives", action="store_true", help="also with the §7b fields, same run")
    parser.add_argument("--live", action="store_true", help="also the live latency (starts servers)")
    parser.add_argument("--live-only", action="store_true", help="only the live latency")
    args = parser.parse_args()

    if args.live_only:
        args.live = True
    else:
        replay_and_pandas(args)
    if args.live:
        live = bench_live(args.symbols)
        print(
            f"live: {args.symbols} symbols closing in the same second, {live['bars']} bars measured: "
            f"JetStream ack → metrics.calculated p50 {live['p50_ms']:.0f} ms, p99 {live['p99_ms']:.0f} ms, "
            f"max {live['max_ms']:.0f} ms; per minute p50 {live['minute_p50_ms']} max {live['minute_max_ms']} ms",
            flush=True,
        )
    return 0


def replay_and_pandas(args: argparse.Namespace) -> None:
    result, reading = replay_once(args, False)
    if args.derivatives:
        replay_once(args, True)
    if not args.no_pandas:
        seconds = bench_pandas(args.symbols, args.minutes)
        if seconds is None:
            print("pandas: not installed, ratio skipped")
        else:
            full_seconds = result["candles"] * reading["full"]
            print(
                f"pandas rolling windows, same metrics: {seconds:.1f} s CPU "
                f"({result['candles'] / seconds:,.0f} candles/s); engine/pandas time ratio with every "
                f"metric read {full_seconds / seconds:.2f}",
                flush=True,
            )


def replay_once(args: argparse.Namespace, derivatives: bool) -> tuple[dict, dict]:
    label = "with §7b fields" if derivatives else "klines only"
    result = bench_replay(args.symbols, args.minutes, derivatives)
    print(
        f"[{label}] replay {args.symbols} symbols × {args.minutes} minutes = {result['candles']:,} candles: "
        f"{result['seconds']:.1f} s CPU, {result['per_second']:,.0f} candles/s end to end, "
        f"{result['engine_per_second']:,.0f} candles/s engine alone "
        f"(creating the candles took {result['creation_seconds']:.1f} s)",
        flush=True,
    )
    print(
        f"memory: peak RSS {result['peak_rss_mb']:.0f} MB (interpreter and imports {result['base_rss_mb']:.0f} MB), "
        f"the {args.symbols} symbol states keep {result['states_mb']:.0f} MB",
        flush=True,
    )
    sample = min(args.sample, args.symbols)
    reading = bench_reading(sample, args.minutes, derivatives)
    print(
        f"[{label}] {sample} symbols × {args.minutes} minutes with every bar's {len(METRIC_NAMES)} metrics "
        f"read: {1 / reading['full']:,.0f} candles/s engine alone ({reading['full'] * 1e6:.1f} µs per bar); "
        f"backtest of the {len(PRESETS)} presets (replay + decisions, {reading['alerts']:,} alerts): "
        f"{1 / reading['backtest']:,.0f} candles/s",
        flush=True,
    )
    return result, reading


if __name__ == "__main__":
    sys.exit(main())
