"""How fast the compiled rule language decides: the 10 presets over 600 symbols × N bars.

Metrics are synthetic but shaped like a market (changes widen with the window, volumes are log-normal per
symbol, ~2% of values null), so `and` short-circuits about as often as it does live. The worst case
(markets built so every clause of every preset must be evaluated) is timed separately.

    .venv/bin/python benchmarks/bench_rule_language.py [--symbols 600] [--bars 240] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alerts.decisions import CooldownTracker, evaluate_bar
from alerts.presets import preset_specs
from cryptomon.contract.names import METRIC_NAMES, TIMEFRAME_MINUTES, TIMEFRAMES

CHANGE_SIGMA = {"5m": 0.4, "15m": 0.7, "1h": 1.2, "4h": 2.5, "8h": 3.5, "1d": 6.0}
MINUTE = 60_000


def market(rng: random.Random, symbols: int) -> list[dict[str, float | None]]:
    """One bar's metrics for every symbol."""
    rows = []
    for index in range(symbols):
        per_minute = 10 ** (3 + 3 * index / symbols) * rng.lognormvariate(0, 0.5)  # 1k..1M USDT a minute
        row: dict[str, float | None] = dict.fromkeys(METRIC_NAMES, 1.0)
        row["price"] = rng.uniform(0.01, 50_000)
        for window in TIMEFRAMES:
            row[f"change_{window}"] = rng.gauss(0, CHANGE_SIGMA[window])
            row[f"volume_{window}"] = per_minute * TIMEFRAME_MINUTES[window] * rng.lognormvariate(0, 0.6)
        for name in METRIC_NAMES:
            if rng.random() < 0.02:
                row[name] = None
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=600)
    parser.add_argument("--bars", type=int, default=240)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    specs = preset_specs()
    evaluators = [spec.compiled.evaluate for spec in specs]
    symbols = [f"SYM{i}USDT" for i in range(args.symbols)]

    raw_seconds = decided_seconds = 0.0
    verdicts = {True: 0, False: 0, None: 0}
    alerts = 0
    tracker = CooldownTracker()
    for bar in range(args.bars):
        rows = market(rng, args.symbols)
        started = time.perf_counter()
        for row in rows:
            for evaluate in evaluators:
                evaluate(row)
        raw_seconds += time.perf_counter() - started
        for row in rows[::12]:  # a sample, outside the timing, for the verdict mix
            for evaluate in evaluators:
                verdicts[evaluate(row)] += 1
        open_time = 1_767_225_600_000 + bar * MINUTE
        started = time.perf_counter()
        for symbol, row in zip(symbols, rows, strict=True):
            alerts += len(evaluate_bar(specs, symbol, open_time, row, tracker))
        decided_seconds += time.perf_counter() - started

    evaluations = args.symbols * args.bars * len(specs)
    print(f"presets: {len(specs)}, symbols: {args.symbols}, bars: {args.bars}, evaluations: {evaluations:,}")
    print(
        f"compiled rule, typical market:   {evaluations / raw_seconds:>12,.0f} evaluations/s"
        f"  ({raw_seconds / evaluations * 1e6:.2f} µs each)"
    )
    print(
        f"evaluate_bar (rule + cooldown):  {evaluations / decided_seconds:>12,.0f} evaluations/s"
        f"  ({decided_seconds / evaluations * 1e6:.2f} µs each, {alerts:,} alerts)"
    )
    sampled = sum(verdicts.values())
    print(
        "verdict mix (sample): "
        + ", ".join(
            f"{label} {verdicts[key] / sampled:.1%}"
            for key, label in ((True, "true"), (False, "false"), (None, "unknown"))
        )
    )

    # Worst case: every comparison evaluated (all clauses true, so no short-circuit).
    from tests.test_presets import FIRING  # the textbook markets: each makes its preset true

    firing = [dict.fromkeys(METRIC_NAMES, 1.0) | FIRING[spec.slug] for spec in specs]
    pairs = [(spec.compiled.evaluate, row) for spec, row in zip(specs, firing, strict=True)]
    repeat = max(1, evaluations // len(pairs) // 4)
    started = time.perf_counter()
    for _ in range(repeat):
        for evaluate, row in pairs:
            evaluate(row)
    worst = time.perf_counter() - started
    count = repeat * len(pairs)
    print(
        f"compiled rule, every clause:     {count / worst:>12,.0f} evaluations/s"
        f"  ({worst / count * 1e6:.2f} µs each)"
    )
    per_bar = args.symbols * len(specs) * (raw_seconds / evaluations)
    print(f"one live bar ({args.symbols} symbols × {len(specs)} presets): {per_bar * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
