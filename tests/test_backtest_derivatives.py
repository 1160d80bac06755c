"""The backtest with the §7b derivatives fields (docs/contract.md §7b, §9): each futures preset fires on a market
built for it with `--rules presets` and no server, and Binance's public-data files (mark and index price
klines, funding rates, open-interest metrics) add their fields to the kline files' candles by minute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alerts import backtest as bt

from .test_backtest import HEADER, MINUTE, T0, alerts_of, backtest, keys

DEFAULTS = {
    "funding_rate": "0.0001",  # 10.95 % a year
    "funding_interval_hours": 8,
    "open_interest": "1000",
    "liq_long_quote": "0",
    "liq_short_quote": "0",
    "liq_count": 0,
}


def candle_line(symbol: str, minute: int, open_: float, close: float, **fields) -> str:
    """One JSON Lines candle: 1,000 USDT a minute (too little for any kline preset), mark = index = close."""
    row = {
        "symbol": symbol,
        "open_time": T0 + minute * MINUTE,
        "open": open_,
        "high": max(open_, close),
        "low": min(open_, close),
        "close": close,
        "volume": "10",
        "quote_volume": "1000",
        "trades": 5,
        "taker_buy_volume": "5",
        "taker_buy_quote_volume": "500",
        "mark_close": close,
        "index_close": close,
        **DEFAULTS,
        **fields,
    }
    return json.dumps(row)


def market(symbol: str, minutes: int, close_at, **fields_at) -> list[str]:
    """`close_at(minute)` the closes (each candle opens at the previous close); `fields_at[name](minute)`
    a field's value, or None to leave the default."""
    lines, previous = [], close_at(0)
    for minute in range(minutes):
        close = close_at(minute)
        extra = {name: value for name, at in fields_at.items() if (value := at(minute)) is not None}
        lines.append(candle_line(symbol, minute, previous, close, **extra))
        previous = close
    return lines


def flat(minute: int) -> float:
    return 100.0


# Each market makes exactly one preset fire exactly once, at the minute given (worked out in the comments).
MARKETS = {
    # mark 100.6 over index 100 at minute 100: basis 0.6 % > 0.5.
    ("futures_basis_dislocation", "BASISUSDT", 100): market(
        "BASISUSDT", 130, flat, mark_close=lambda m: 100.6 if m == 100 else None
    ),
    # minutes 100..104 fall from 100 to 98.5 (change_5m -1.5 % at 104) while 1.2 M USDT of longs are
    # liquidated at 104; at 105..108 the window still holds them but the 300 s cooldown holds the alert.
    ("futures_long_squeeze", "LONGSQUSDT", 104): market(
        "LONGSQUSDT",
        130,
        lambda m: 100.0 if m < 100 else max(98.5, 100.0 - 0.3 * (m - 99)),
        liq_long_quote=lambda m: "1200000" if m == 104 else None,
    ),
    ("futures_short_squeeze", "SHORTSQUSDT", 104): market(
        "SHORTSQUSDT",
        130,
        lambda m: 100.0 if m < 100 else min(101.5, 100.0 + 0.3 * (m - 99)),
        liq_short_quote=lambda m: "1200000" if m == 104 else None,
    ),
    # OI 1000 until minute 100, then +4 a minute to 1060 at 115: oi_change_15m first above 5 % at 113
    # (1052 against 1000), below again from 118; the price does not move.
    ("futures_oi_surge", "OISURGEUSDT", 113): market(
        "OISURGEUSDT", 130, flat, open_interest=lambda m: str(1000 + 4 * min(max(m - 100, 0), 15))
    ),
    # funding 0.06 % per 8 h = 65.7 % a year; OI 1000 → 1100 over minutes 100..200; the price creeps up:
    # oi_change_4h and change_4h first exist at minute 240 (t − 240 = minute 0 present).
    ("futures_crowded_longs", "CROWDLUSDT", 240): market(
        "CROWDLUSDT",
        241,
        lambda m: 100.0 + 0.001 * m,
        funding_rate=lambda m: "0.0006",
        open_interest=lambda m: str(1000 + min(max(m - 100, 0), 100)),
    ),
    ("futures_crowded_shorts", "CROWDSUSDT", 240): market(
        "CROWDSUSDT",
        241,
        lambda m: 100.0 - 0.001 * m,
        funding_rate=lambda m: "-0.0006",
        open_interest=lambda m: str(1000 + min(max(m - 100, 0), 100)),
    ),
}


def test_each_futures_preset_fires_on_its_market_with_presets_and_no_server(tmp_path):
    lines = [line for market_lines in MARKETS.values() for line in market_lines]
    (tmp_path / "futures.jsonl").write_text("\n".join(lines) + "\n")
    result = backtest("--input", "futures.jsonl", "--rules", "presets", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    alerts = alerts_of(result.stdout)
    want = sorted(
        ((slug, symbol, T0 + minute * MINUTE) for slug, symbol, minute in MARKETS),
        key=lambda key: (key[2], key[1], key[0]),
    )
    assert keys(alerts) == want  # each fires once, nothing else fires
    assert "16 rule(s)" in result.stderr
    assert not (tmp_path / "var" / "embedded.env").exists()  # nothing was started
    by_rule = {alert["rule"]: alert["metrics"] for alert in alerts}
    assert by_rule["futures_basis_dislocation"] == {"basis": pytest.approx(0.6), "volume_1d": None}
    assert by_rule["futures_long_squeeze"]["liq_long_5m"] == 1_200_000.0
    assert by_rule["futures_oi_surge"]["oi_change_15m"] == 5.2
    assert by_rule["futures_crowded_longs"]["funding_apr"] == 0.0006 * 100 * 24 / 8 * 365
    assert set(by_rule["futures_crowded_shorts"]) == {"funding_apr", "oi_change_4h", "change_4h", "volume_1d"}


def test_without_derivatives_fields_the_futures_presets_stay_unknown(tmp_path):
    lines = [line for market_lines in MARKETS.values() for line in market_lines]
    stripped = []
    for line in lines:
        row = json.loads(line)
        stripped.append(
            json.dumps({k: v for k, v in row.items() if k not in (*DEFAULTS, "mark_close", "index_close")})
        )
    (tmp_path / "plain.jsonl").write_text("\n".join(stripped) + "\n")
    result = backtest("--input", "plain.jsonl", "--rules", "presets", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert alerts_of(result.stdout) == []


# --- Binance public-data files ------------------------------------------------------------------------


def kline_rows(minutes: int, close) -> list[str]:
    rows = []
    for minute in range(minutes):
        t = T0 + minute * MINUTE
        c = close(minute)
        rows.append(f"{t},{c},{c},{c},{c},10,{t + MINUTE - 1},1000,5,5,500,0")
    return rows


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def binance_files(tmp_path: Path, minutes: int = 30) -> list[str]:
    """A day's trade, mark and index klines, the month's funding and the day's metrics of BTCUSDT, laid out
    as data.binance.vision does (mark and index files are named like trade kline files)."""
    day = "2026-01-01"
    write(tmp_path / "klines" / f"BTCUSDT-1m-{day}.csv", [HEADER, *kline_rows(minutes, lambda m: 100.0)])
    write(
        tmp_path / "markPriceKlines" / "BTCUSDT" / "1m" / f"BTCUSDT-1m-{day}.csv",
        [HEADER, *kline_rows(minutes, lambda m: 100.7 if m == 20 else 100.05)],
    )
    write(
        tmp_path / "indexPriceKlines" / f"BTCUSDT-1m-{day}.csv", kline_rows(minutes, lambda m: 100.0)
    )  # no header
    write(
        tmp_path / "BTCUSDT-fundingRate-2026-01.csv",
        ["calc_time,funding_interval_hours,last_funding_rate", f"{T0 + 8 * 3_600_000 + 7},8,0.00012"],
    )
    metrics_header = ",".join(bt.METRICS_COLUMNS)
    write(
        tmp_path / f"BTCUSDT-metrics-{day}.csv",
        [metrics_header]
        + [
            f"{day} 00:{m:02d}:00,BTCUSDT,{1000 + m}.5,{(1000 + m) * 100}.0,1.1,1.2,0.9,1.0"
            for m in range(0, 30, 5)
        ]
        + [
            f"{day} 00:10:00,BTCUSDT,1011.5,101150.0,1.1,1.2,0.9,1.0"
        ],  # a second sample of 00:10: the newest wins
    )
    return [
        "klines/BTCUSDT-1m-2026-01-01.csv",
        "markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-2026-01-01.csv",
        "indexPriceKlines/BTCUSDT-1m-2026-01-01.csv",
        "BTCUSDT-fundingRate-2026-01.csv",
        "BTCUSDT-metrics-2026-01-01.csv",
    ]


def test_each_binance_file_kind_is_told_from_its_name_and_header(tmp_path):
    names = binance_files(tmp_path)
    sources = bt.plan_sources([str(tmp_path / name) for name in names], None)
    assert [(s.kind, s.symbol) for s in sources] == [
        ("klines", "BTCUSDT"),
        ("mark", "BTCUSDT"),
        ("index", "BTCUSDT"),
        ("funding", "BTCUSDT"),
        ("metrics", "BTCUSDT"),
    ]


def test_binance_files_add_their_fields_to_the_kline_candles_by_minute(tmp_path):
    names = binance_files(tmp_path)
    sources = bt.plan_sources([str(tmp_path / name) for name in names], None)
    (job,) = bt.file_jobs(sources, None)
    candles = [c for c, _ in bt.read_source(job.csv_sources[0])]
    merged = bt.add_fields("BTCUSDT", candles, job.field_sources, names)
    d = {c.open_time: c.derivatives for c in merged}
    assert d[T0].mark_close == 100.05 and d[T0 + 20 * MINUTE].mark_close == 100.7
    assert all(x.index_close == 100.0 for x in d.values())
    assert (d[T0].funding_rate, d[T0].funding_interval_hours, d[T0].next_funding_time) == (
        0.00012,
        8.0,
        T0 + 8 * 3_600_000,
    )
    assert d[T0 + 5 * MINUTE].open_interest == 1005.5 and d[T0 + 10 * MINUTE].open_interest == 1011.5
    assert d[T0 + 6 * MINUTE].open_interest is None  # no sample taken in that minute
    assert d[T0].liq_long_quote_e8 is None  # no file gives liquidations: unknown
    plain = list(bt.read_candles(tmp_path / names[0]))
    assert all(c.derivatives is None for c in plain)  # a kline CSV alone has none


def test_presets_over_binance_files_see_the_mark_index_basis(tmp_path):
    names = binance_files(tmp_path)
    result = backtest(
        *(arg for name in names for arg in ("--input", name)), "--rules", "presets", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    alerts = alerts_of(result.stdout)
    assert keys(alerts) == [("futures_basis_dislocation", "BTCUSDT", T0 + 20 * MINUTE)]
    assert alerts[0]["metrics"]["basis"] == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("name", "lines", "message"),
    [
        (
            "BTCUSDT-metrics-2026-01-01.csv",
            [
                ",".join(bt.METRICS_COLUMNS),
                "2026-01-01 00:05:00,BTCUSDT,1000,1,1,1,1,1",
                "yesterday,BTCUSDT,1,1,1,1,1,1",
            ],
            "BTCUSDT-metrics-2026-01-01.csv:3: create_time: not a time",
        ),
        (
            "BTCUSDT-metrics-2026-01-01.csv",
            [",".join(bt.METRICS_COLUMNS), "2026-01-01 00:05:00,BTCUSDT,-5,1,1,1,1,1"],
            "BTCUSDT-metrics-2026-01-01.csv:2: sum_open_interest: negative",
        ),
        (
            "BTCUSDT-fundingRate-2026-01.csv",
            ["calc_time,funding_interval_hours,last_funding_rate", f"{T0},8,lots"],
            "BTCUSDT-fundingRate-2026-01.csv:2: last_funding_rate: not a number",
        ),
        (
            "BTCUSDT-fundingRate-2026-01.csv",
            ["calc_time,funding_rate", f"{T0},0.1"],
            "BTCUSDT-fundingRate-2026-01.csv:1: the header must be calc_time,funding_interval_hours,last_funding_rate",
        ),
        (
            "markPriceKlines/BTCUSDT-1m-2026-01-01.csv",
            [HEADER, *kline_rows(3, lambda m: 100.0), kline_rows(3, lambda m: 99.0)[1]],
            "markPriceKlines/BTCUSDT-1m-2026-01-01.csv:5: minute",
        ),
    ],
)
def test_a_bad_binance_file_exits_1_naming_file_and_line_and_writes_nothing(tmp_path, name, lines, message):
    write(tmp_path / "BTCUSDT-1m-2026-01-01.csv", [HEADER, *kline_rows(30, lambda m: 100.0)])
    write(tmp_path / name, lines)
    result = backtest(
        "--input", "BTCUSDT-1m-2026-01-01.csv", "--input", name, "--rules", "presets", "--output", "out.jsonl",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_field_given_differently_by_a_candle_and_a_binance_file_is_bad_input(tmp_path):
    (tmp_path / "btc.jsonl").write_text(
        "\n".join(market("BTCUSDT", 3, flat, mark_close=lambda m: 100.2)) + "\n"
    )
    write(tmp_path / "markPriceKlines" / "BTCUSDT-1m-2026-01-01.csv", kline_rows(3, lambda m: 100.1))
    result = backtest(
        "--input", "btc.jsonl", "--input", "markPriceKlines/BTCUSDT-1m-2026-01-01.csv", "--rules", "presets",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "markPriceKlines/BTCUSDT-1m-2026-01-01.csv:1: BTCUSDT" in result.stderr
    assert "mark_close 100.1 differs from the candle's 100.2" in result.stderr
