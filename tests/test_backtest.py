"""`manage.py backtest` as docs/contract.md §9 describes it: formats, merging, duplicates, errors, exit codes, and no
server needed for `--rules presets` with `--input`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alerts.backtest import InputError, read_candles
from cryptomon import embedded

from .conftest import ROOT

MINUTE = 60_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
    "taker_buy_quote_volume,ignore"
)


def pioneer_rows(minutes: int = 40, base: int = T0) -> list[list[str]]:
    """Flat at 100 with 1,000 USDT a minute, then minute 30 jumps to 102 on 50,000 USDT and stays there.

    At minute 30: change_5m = change_15m = 2 %, volume_5m = 54,000, volume_15m = 64,000 → Pioneer Bull
    fires; minute 31 is still true but inside the 300 s cooldown; from minute 35 change_5m is 0. Nothing
    else can fire (the hourly windows are incomplete)."""
    rows = []
    for minute in range(minutes):
        open_time = base + minute * MINUTE
        if minute < 30:
            o = c = "100"
        elif minute == 30:
            o, c = "100", "102"
        else:
            o = c = "102"
        quote = "50000" if minute == 30 else "1000"
        high, low = max(o, c), min(o, c)
        rows.append(
            [str(open_time), o, high, low, c, "10", str(open_time + MINUTE - 1), quote, "7", "5", "500", "0"]
        )
    return rows


def write_csv(path: Path, rows: list[list[str]], header: bool = True) -> Path:
    lines = ([HEADER] if header else []) + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def as_jsonl(symbol: str, rows: list[list[str]]) -> str:
    lines = []
    for r in rows:
        candle = {
            "symbol": symbol,
            "open_time": int(r[0]),
            "close_time": int(r[6]),
            "open": r[1],
            "high": float(r[2]),
            "low": r[3],
            "close": float(r[4]),
            "volume": r[5],
            "quote_volume": float(r[7]),
            "trades": int(r[8]),
            "taker_buy_volume": r[9],
            "taker_buy_quote_volume": r[10],
            "extra": "ignored",
        }
        lines.append(json.dumps(candle))
    return "\n".join(lines) + "\n"


def serverless_env(var_dir: Path) -> dict[str, str]:
    """An environment with no server configured, as on a laptop without the embedded servers started."""
    env = {
        k: v for k, v in os.environ.items() if k not in (*embedded.SERVER_URL_VARS, "TIMESERIES_DATABASE_URL")
    }
    env.update(CRYPTOMON_VAR_DIR=str(var_dir), SECRET_KEY="test-only")
    return env


def backtest(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "backtest", *args],
        cwd=cwd,
        env=env or serverless_env(cwd / "var"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def alerts_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def pioneer_at(minute: int, symbol: str = "BTCUSDT") -> tuple[str, str, int]:
    return ("futures_pioneer_bull", symbol, T0 + minute * MINUTE)


def keys(alerts: list[dict]) -> list[tuple[str, str, int]]:
    return [(a["rule"], a["symbol"], a["open_time"]) for a in alerts]


def test_presets_over_a_csv_file_need_no_server_at_all(tmp_path):
    write_csv(tmp_path / "BTCUSDT-1m-2026-01-01.csv", pioneer_rows())
    result = backtest("--input", "BTCUSDT-1m-2026-01-01.csv", "--rules", "presets", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    alerts = alerts_of(result.stdout)
    assert keys(alerts) == [pioneer_at(30)]
    assert alerts[0]["price"] == 102.0
    assert alerts[0]["metrics"] == {
        "change_5m": 2.0,
        "change_15m": 2.0,
        "volume_5m": 54_000.0,
        "volume_15m": 64_000.0,
        "volume_1d": None,
    }
    assert "futures_pioneer_bull: 1 alert(s)" in result.stderr and "backtest [" in result.stderr
    var = tmp_path / "var"
    assert not (var / "embedded.env").exists() and not (var / "postgres").exists()  # nothing was started


def test_a_csv_file_reads_the_same_with_or_without_its_header_and_in_microseconds(tmp_path):
    write_csv(tmp_path / "BTCUSDT-1m-a.csv", pioneer_rows(), header=True)
    micro = [[str(int(r[0]) * 1000), *r[1:6], str(int(r[6]) * 1000 + 999), *r[7:]] for r in pioneer_rows()]
    write_csv(tmp_path / "BTCUSDT-1m-b.csv", micro, header=False)
    exponent = [[*r[:7], f"{float(r[7]):.4e}", *r[8:]] for r in pioneer_rows()]
    write_csv(tmp_path / "BTCUSDT-1m-c.csv", exponent, header=False)
    outputs = []
    for name in ("BTCUSDT-1m-a.csv", "BTCUSDT-1m-b.csv", "BTCUSDT-1m-c.csv"):
        result = backtest("--input", name, "--rules", "presets", "--output", f"{name}.jsonl", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        outputs.append((tmp_path / f"{name}.jsonl").read_text())
    assert outputs[0] == outputs[1] == outputs[2]
    assert keys(alerts_of(outputs[0])) == [pioneer_at(30)]


def test_several_files_are_one_history_whatever_their_order_and_overlap(tmp_path):
    rows = pioneer_rows()
    write_csv(tmp_path / "BTCUSDT-1m-2026-01-01.csv", rows[:26])
    write_csv(tmp_path / "BTCUSDT-1m-2026-01-02.csv", rows[20:], header=False)  # minutes 20..25 twice, equal
    (tmp_path / "eth.jsonl").write_text(as_jsonl("ETHUSDT", rows))
    result = backtest(
        "--input", "BTCUSDT-1m-2026-01-02.csv", "--input", "eth.jsonl", "--input", "BTCUSDT-1m-2026-01-01.csv",
        "--rules", "presets", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # ordered by open_time, then symbol; windows span the two BTC files
    assert keys(alerts_of(result.stdout)) == [pioneer_at(30, "BTCUSDT"), pioneer_at(30, "ETHUSDT")]


def test_symbol_selects_one_symbol_of_json_lines_and_names_a_csv_file(tmp_path):
    rows = pioneer_rows()
    (tmp_path / "mixed.jsonl").write_text(as_jsonl("ETHUSDT", rows) + as_jsonl("SOLUSDT", rows))
    write_csv(tmp_path / "klines.csv", rows)
    result = backtest(
        "--input", "mixed.jsonl", "--input", "klines.csv", "--symbol", "SOLUSDT", "--rules", "presets",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert keys(alerts_of(result.stdout)) == [pioneer_at(30, "SOLUSDT")]  # the CSV is SOLUSDT too: equal


def test_a_repeated_minute_with_different_values_is_bad_input_naming_both_places(tmp_path):
    rows = pioneer_rows()
    changed = [*rows[25][:4], "100.5", *rows[25][5:]]
    write_csv(tmp_path / "BTCUSDT-1m-a.csv", rows[:30])
    write_csv(tmp_path / "BTCUSDT-1m-b.csv", [changed, *rows[26:]], header=False)
    result = backtest(
        "--input", "BTCUSDT-1m-a.csv", "--input", "BTCUSDT-1m-b.csv", "--rules", "presets",
        "--output", "out.jsonl", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "BTCUSDT-1m-b.csv:1" in result.stderr and "BTCUSDT-1m-a.csv:27" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        (HEADER + "\n" + ",".join(pioneer_rows()[0]) + "\n1767225660000,abc,1,1,1,1,1767225719999,1,1,1,1,0\n",
         3, "open: not a number"),
        ("open_time,open,high\n", 1, "header must be"),
        (",".join(pioneer_rows()[0][:11]) + "\n", 1, "expected 12 columns"),
        ('{"symbol": "BTCUSDT", "open_time": 1767225600000}\n', 1, "missing"),
        ('{"symbol": "BTCUSDT", ' + "\n", 1, "malformed JSON"),
    ],
)  # fmt: skip
def test_bad_input_stops_with_the_file_and_line_and_writes_nothing(tmp_path, content, line, problem):
    good = write_csv(tmp_path / "ETHUSDT-1m-2026-01-01.csv", pioneer_rows())
    bad = tmp_path / "BTCUSDT-1m-2026-01-02.csv"
    bad.write_text(content)
    result = backtest(
        "--input", good.name, "--input", bad.name, "--rules", "presets", "--output", "out.jsonl", cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert f"{bad.name}:{line}" in result.stderr and problem in result.stderr
    assert not (tmp_path / "out.jsonl").exists()
    assert result.stdout == ""


def test_usage_errors_exit_with_2(tmp_path):
    write_csv(tmp_path / "BTCUSDT-1m-2026-01-01.csv", pioneer_rows())
    unknown_option = backtest(
        "--input", "BTCUSDT-1m-2026-01-01.csv", "--rules", "presets", "--bogus", cwd=tmp_path
    )
    assert unknown_option.returncode == 2
    missing = backtest("--input", "nowhere.csv", "--rules", "presets", cwd=tmp_path)
    assert missing.returncode == 2 and "nowhere.csv: no such file" in missing.stderr
    (tmp_path / "klines.csv").write_text(",".join(pioneer_rows()[0]) + "\n")
    nameless = backtest("--input", "klines.csv", "--rules", "presets", cwd=tmp_path)
    assert nameless.returncode == 2 and "--symbol" in nameless.stderr


def test_no_alerts_is_still_success_with_an_empty_output(tmp_path):
    write_csv(tmp_path / "BTCUSDT-1m-2026-01-01.csv", pioneer_rows(25))
    result = backtest(
        "--input", "BTCUSDT-1m-2026-01-01.csv", "--rules", "presets", "--output", "-", cwd=tmp_path
    )
    assert result.returncode == 0 and result.stdout == ""
    assert "0 alert(s) from 16 rule(s)" in result.stderr


# --- with the database: rules from alert_rules, candles from candles_1m ---------------------------------


def database_env(tmp_path: Path) -> dict[str, str]:
    from django.conf import settings

    env = {**os.environ, "CRYPTOMON_VAR_DIR": os.environ["CRYPTOMON_VAR_DIR"]}
    for variable, alias in (("DATABASE_URL", "default"), ("TIMESERIES_DATABASE_URL", "timeseries")):
        url = os.environ[variable]
        name = url.split("/")[3].split("?")[0]
        env[variable] = url.replace(f"/{name}", f"/{settings.DATABASES[alias]['NAME']}", 1)
    return env


def store_candles(symbol: str, rows: list[list[str]]) -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    from metrics.models import StoredCandle

    StoredCandle.objects.bulk_create(
        StoredCandle(
            symbol=symbol,
            time=datetime.fromtimestamp(int(r[0]) / 1000, UTC),
            open=Decimal(r[1]),
            high=Decimal(r[2]),
            low=Decimal(r[3]),
            close=Decimal(r[4]),
            volume=Decimal(r[5]),
            quote_volume=Decimal(r[7]),
            trades=int(r[8]),
            taker_buy_volume=Decimal(r[9]),
            taker_buy_quote_volume=Decimal(r[10]),
            source="ws",
            event_time=datetime.fromtimestamp((int(r[6]) + 1) / 1000, UTC),
        )
        for r in rows
    )


@pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)
def test_without_input_it_reads_candles_1m_with_the_enabled_rules(tmp_path):
    from alerts.models import AlertRule

    AlertRule.objects.all().delete()
    AlertRule.objects.create(slug="jump", name="Jump", expression="change_5m > 1", cooldown_seconds=0)
    AlertRule.objects.create(slug="off", name="Off", expression="change_5m > 1", enabled=False)
    store_candles("BTCUSDT", pioneer_rows())
    store_candles("ETHUSDT", pioneer_rows()[:20])
    result = backtest("--output", "all.jsonl", cwd=tmp_path, env=database_env(tmp_path))
    assert result.returncode == 0, result.stderr
    # change_5m > 1 holds from minute 30 (open 100 → 102) to 34 (its window still opens at minute 30)
    expected = [("jump", "BTCUSDT", T0 + m * MINUTE) for m in (30, 31, 32, 33, 34)]
    assert keys(alerts_of((tmp_path / "all.jsonl").read_text())) == expected
    named = backtest("--rules", "off", "--symbol", "BTCUSDT", cwd=tmp_path, env=database_env(tmp_path))
    assert named.returncode == 0, named.stderr  # a named rule runs even when disabled
    assert [a["rule"] for a in alerts_of(named.stdout)] == ["off"]  # its cooldown of 300 s: one alert
    unknown = backtest("--rules", "jump,nope", cwd=tmp_path, env=database_env(tmp_path))
    assert unknown.returncode == 2 and "unknown rule slug(s): nope" in unknown.stderr


# --- the candle-file reader (JSON Lines and Binance CSV, docs/contract.md §9) ------------------------------------


def test_a_binance_csv_file_is_read_with_its_header_microseconds_and_exponents(tmp_path):
    path = tmp_path / "ETHUSDT-1m-2026-01-01.csv"
    path.write_text(
        "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
        "taker_buy_quote_volume,ignore\n"
        f"{T0},3000,3001,2999,3000.5,1.5,{T0 + 59_999},4500.75,7,1,3000.5,0\n"
        f"{(T0 + 60_000) * 1000},3000.5,3002,3000,3001,2E0,{(T0 + 119_999) * 1000},6.0015e3,9,1,3001,0\n"
    )
    first, second = read_candles(path)
    assert first.symbol == second.symbol == "ETHUSDT"
    assert second.open_time == T0 + 60_000 and second.close_time == T0 + 119_999
    assert second.quote_volume_e8 == 600150000000 and second.volume_e8 == 200000000
    assert first.trades == 7 and first.event_time is None


def test_a_bad_csv_line_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "X-1m.csv"
    path.write_text(
        f"{T0},1,1,1,1,1,{T0 + 59_999},1,1,1,1,0\n{T0 + 60_000},1,1,1,oops,1,{T0 + 119_999},1,1,1,1,0\n"
    )
    with pytest.raises(InputError, match=r"X-1m.csv:2: close: not a number"):
        list(read_candles(path))


def test_a_wrong_csv_header_is_refused(tmp_path):
    path = tmp_path / "X-1m.csv"
    path.write_text("time,open,high,low,close,volume,close_time,quote_volume,count,a,b,c\n")
    with pytest.raises(InputError, match="header must be"):
        list(read_candles(path))


def test_json_lines_are_read_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "candles.jsonl"
    good = (
        f'{{"symbol":"X","open_time":{T0},"close_time":{T0 + 59_999},"open":"1","high":"2","low":"1",'
        '"close":"2","volume":"1","quote_volume":"1.5","trades":1,"taker_buy_volume":"0",'
        '"taker_buy_quote_volume":"0"}'
    )
    path.write_text(good + "\n\n" + good.replace('"close":"2"', '"close":"x"') + "\n")
    reader = read_candles(path)
    assert next(reader).quote_volume_e8 == 150000000
    with pytest.raises(InputError, match=r"candles.jsonl:3: close: not a number"):
        next(reader)
