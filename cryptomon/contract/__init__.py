"""The contract between cryptomon's processes, in one place every app may import (docs/contract.md §5, §7).

It imports no app, only the standard library and msgspec, so the import graph runs one way
(contract ← collector ← metrics ← alerts ← gateway):

- `names`: timeframes and the metric names the engine computes and rules read;
- `subjects`: NATS subjects, their wildcards and the JetStream streams;
- `times`: `MINUTE_MS` and the epoch-millisecond ↔ datetime conversions;
- `candles`: the `candles.1m` / `candles.live` message (the metrics engine's and the backtest's candle);
- `messages`: the `metrics.*`, `alerts.triggered` and `collector.status` messages.

The NATS mechanics (connecting, streams, consumers, publishing) live in `cryptomon.messaging`.
"""
