"""The backtest of docs/contract.md §9: candles in, the alerts the live engine would have stored out.

Same code as live: `metrics.replay` computes the bars exactly as `run_metrics` does, and the decisions
are those of `run_alerts` (`alerts.decisions` semantics, taken with numpy over many bars at once by
`alerts.vectorized`, as the live engine does over many symbols), so `alert_history` equals the backtest of
`candles_1m`. Every rule is evaluated on closed bars only
(intrabar rules included) with its own cooldown.

Framework-free apart from `stored_symbols`/`stored_candles` (the `candles_1m` reader, imported lazily):
`--rules presets` with `--input` runs without any server. Work is split per symbol (windows never span
symbols), over several processes when there are several cores; nothing is written before every input
has been read and checked.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from alerts.decisions import CooldownTracker, RuleSpec, alert_metrics
from alerts.vectorized import VectorRule, decide_series
from cryptomon.contract.candles import CSV_COLUMNS, Candle, Derivatives, decode_payload
from cryptomon.contract.times import MINUTE_MS
from metrics.replay import replay


class UsageError(ValueError):
    """The command line is wrong (exit code 2)."""


class InputError(ValueError):
    """An input file is bad (exit code 1); the message names the file and the line."""


# The kinds of input file (docs/alerts.md, "Backtest input files"): candles (JSON Lines or Binance's kline
# CSV), and Binance public-data files that only add §7b fields to the candles of the same symbol and minute.
JSONL, KLINES, MARK, INDEX, FUNDING, OPEN_INTEREST = "jsonl", "klines", "mark", "index", "funding", "metrics"
FUNDING_COLUMNS = ("calc_time", "funding_interval_hours", "last_funding_rate")
METRICS_COLUMNS = (
    "create_time",
    "symbol",
    "sum_open_interest",
    "sum_open_interest_value",
    "count_toptrader_long_short_ratio",
    "sum_toptrader_long_short_ratio",
    "count_long_short_ratio",
    "sum_taker_long_short_vol_ratio",
)


@dataclass(frozen=True, slots=True)
class Source:
    """One `--input` file: its position on the command line, its kind and (CSV) its symbol."""

    index: int
    path: Path
    kind: str
    symbol: str | None

    @property
    def jsonl(self) -> bool:
        return self.kind == JSONL

    @property
    def adds_fields(self) -> bool:
        """A file of §7b fields only (merged into the candles of its symbol), not of candles."""
        return self.kind not in (JSONL, KLINES)


def _first_line(path: Path, name: str) -> str:
    """The first non-blank line (stripped), read in bounded pieces."""
    try:
        with path.open("r", encoding="utf-8") as handle:
            text = ""
            while chunk := handle.read(65536):
                text = (text + chunk).lstrip()
                if "\n" in text or len(text) > 65536:
                    break
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{name}:1: cannot read the file: {error}") from None
    return text.split("\n", 1)[0].strip()


def file_kind(path: Path, first_line: str) -> str:
    """JSON Lines by the first character (§9); a CSV by its header, and kline CSVs by their path: Binance
    names mark and index price kline files exactly like trade kline files, only their folder
    (`markPriceKlines/`, `indexPriceKlines/`) tells them apart."""
    if first_line.startswith("{"):
        return JSONL
    header = tuple(field.strip() for field in first_line.split(","))
    if header == FUNDING_COLUMNS or "fundingRate" in path.name:
        return FUNDING
    if header[:3] == METRICS_COLUMNS[:3] or "-metrics-" in path.name:
        return OPEN_INTEREST
    where = str(path)
    if "markPriceKlines" in where:
        return MARK
    if "indexPriceKlines" in where:
        return INDEX
    if "premiumIndexKlines" in where:
        raise UsageError(f"--input {path}: premium index klines carry no field the backtest reads")
    return KLINES


def plan_sources(paths: Sequence[str], symbol: str | None) -> list[Source]:
    """Check that each input exists and decide its kind: JSON Lines by its first non-blank character (§9),
    CSV kinds by header and name (`file_kind`)."""
    sources = []
    for index, name in enumerate(paths):
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"--input {name}: no such file")
        kind = file_kind(path, _first_line(path, name))
        csv_symbol = None
        if kind != JSONL:
            csv_symbol = symbol or path.name.split("-", 1)[0]
            if "-" not in path.name and not symbol:
                raise UsageError(
                    f"--input {name}: cannot tell the symbol of a CSV file from its name; name it like "
                    "BTCUSDT-1m-2026-01-01.csv or pass --symbol"
                )
        sources.append(Source(index, path, kind, csv_symbol))
    return sources


def read_candles(path: str | Path, symbol: str | None = None) -> Iterator[Candle]:
    """The candles of one JSON Lines or Binance CSV file, in file order, read by the rules of docs/contract.md §9
    (the one candle-file reader); UsageError or InputError say what is wrong."""
    source = plan_sources([str(path)], symbol)[0]
    if source.adds_fields:
        raise UsageError(f"{path}: a file of {source.kind} fields holds no candles")
    for candle, _ in read_source(source):
        yield candle


def read_source(source: Source, only_symbol: str | None = None) -> Iterator[tuple[Candle, int]]:
    """(candle, line number) of every candle of one file; InputError names the file and line."""
    try:
        with source.path.open("r", encoding="utf-8", newline="") as handle:
            if source.jsonl:
                yield from _read_jsonl(source, handle, only_symbol)
            else:
                yield from _read_csv(source, handle)
    except UnicodeDecodeError as error:
        raise InputError(f"{source.path}: not UTF-8 text ({error})") from None


def _read_jsonl(source: Source, handle: TextIO, only_symbol: str | None) -> Iterator[tuple[Candle, int]]:
    for number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            candle = decode_payload(line.encode())
        except ValueError as error:
            raise InputError(f"{source.path}:{number}: {error}") from None
        if only_symbol is None or candle.symbol == only_symbol:
            yield candle, number


def _read_csv(source: Source, handle: TextIO) -> Iterator[tuple[Candle, int]]:
    import csv

    symbol = source.symbol
    seen_data = False
    for number, row in enumerate(csv.reader(handle), 1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        fields = [value.strip() for value in row]
        if not seen_data and not fields[0].lstrip("+-").isdigit():
            if tuple(fields) != CSV_COLUMNS:
                raise InputError(
                    f"{source.path}:{number}: the header must be {','.join(CSV_COLUMNS)} "
                    f"(got {','.join(fields)[:200]})"
                )
            seen_data = True
            continue
        seen_data = True
        try:
            candle = Candle.from_csv_row(symbol, fields)
        except ValueError as error:
            raise InputError(f"{source.path}:{number}: {error}") from None
        yield candle, number


# --- files of §7b fields ---------------------------------------------------------------------------------

FieldRows = dict[int, tuple[dict[str, Any], int]]  # open time → (fields, line)


def read_fields(source: Source) -> FieldRows:
    """The §7b fields one Binance public-data file gives, per minute (open time) of its symbol."""
    import csv

    read = {MARK: _kline_close, INDEX: _kline_close, FUNDING: _funding, OPEN_INTEREST: _open_interest}[
        source.kind
    ]
    rows: list[tuple[list[str], int]] = []
    try:
        with source.path.open("r", encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.reader(handle), 1):
                if row and not (len(row) == 1 and not row[0].strip()):
                    rows.append(([value.strip() for value in row], number))
    except UnicodeDecodeError as error:
        raise InputError(f"{source.path}: not UTF-8 text ({error})") from None
    try:
        return read(source, rows)
    except _BadRow as error:
        raise InputError(f"{source.path}:{error.line}: {error.why}") from None


class _BadRow(Exception):
    def __init__(self, line: int, why: str) -> None:
        super().__init__(why)
        self.line, self.why = line, why


def _data_rows(rows: list[tuple[list[str], int]], header: tuple[str, ...], exact: bool = True):
    """Rows after an optional header (a first row whose first field is not an integer), checked."""
    for position, (fields, number) in enumerate(rows):
        if position == 0 and not fields[0].lstrip("+-").isdigit():
            if (tuple(fields) if exact else tuple(fields[: len(header)])) != header:
                raise _BadRow(number, f"the header must be {','.join(header)} (got {','.join(fields)[:200]})")
            continue
        yield fields, number


def _put(out: FieldRows, open_time: int, fields: dict[str, Any], number: int, newest: bool = False) -> None:
    """One minute's fields; a repeated minute must agree (`newest`: a later line wins, as the newest
    open-interest sample of a minute does)."""
    known = out.get(open_time)
    if known is not None and not newest and known[0] != fields:
        raise _BadRow(number, f"minute {open_time} differs from the same minute at line {known[1]}")
    out[open_time] = (fields, number)


def _kline_close(source: Source, rows) -> FieldRows:
    field = "mark_close" if source.kind == MARK else "index_close"
    out: FieldRows = {}
    for fields, number in _data_rows(rows, CSV_COLUMNS):
        try:
            candle = Candle.from_csv_row(source.symbol, fields)
        except ValueError as error:
            raise _BadRow(number, str(error)) from None
        _put(out, candle.open_time, {field: candle.close}, number)
    return out


def _funding(source: Source, rows) -> FieldRows:
    """Each settlement (`calc_time`, at most a few ms after the hour) gives the rate and interval to every
    minute of the funding interval it closes, [previous settlement, this one), and is their next funding
    time (docs/metrics.md, "Backtest from Binance files")."""
    from cryptomon.contract.candles import integer_value, price_value, signed_value

    settlements = []
    for fields, number in _data_rows(rows, FUNDING_COLUMNS):
        if len(fields) != 3:
            raise _BadRow(number, f"expected 3 columns, got {len(fields)}")
        try:
            settled = integer_value(fields[0], "calc_time") // MINUTE_MS * MINUTE_MS
            hours = price_value(fields[1], "funding_interval_hours")
            rate = signed_value(fields[2], "last_funding_rate")
        except ValueError as error:
            raise _BadRow(number, str(error)) from None
        if not hours:
            raise _BadRow(number, "funding_interval_hours: must be positive")
        settlements.append((settled, hours, rate, number))
    settlements.sort()
    out: FieldRows = {}
    previous = None
    for settled, hours, rate, number in settlements:
        start = settled - int(hours * 3_600_000)
        if previous is not None and previous > start:
            start = previous
        fields = {"funding_rate": rate, "funding_interval_hours": hours, "next_funding_time": settled}
        for open_time in range(start // MINUTE_MS * MINUTE_MS, settled, MINUTE_MS):
            _put(out, open_time, fields, number)
        previous = settled
    return out


def _open_interest(source: Source, rows) -> FieldRows:
    """`sum_open_interest` of each 5-minute sample is the `open_interest` of the minute it was taken in."""
    from datetime import UTC, datetime

    from cryptomon.contract.candles import price_value

    out: FieldRows = {}
    for fields, number in _data_rows(rows, METRICS_COLUMNS[:3], exact=False):
        if len(fields) < 3:
            raise _BadRow(number, f"expected at least 3 columns, got {len(fields)}")
        try:
            moment = datetime.strptime(fields[0], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        except ValueError:
            why = f"create_time: not a time like 2026-01-01 00:05:00 (got {fields[0][:40]!r})"
            raise _BadRow(number, why) from None
        if fields[1] != source.symbol:
            raise _BadRow(number, f"symbol: {fields[1][:40]!r} is not the file's symbol {source.symbol}")
        if not fields[2]:
            continue  # Binance leaves a sample it does not have empty: no sample in that minute
        try:
            value = price_value(fields[2], "sum_open_interest")
        except ValueError as error:
            raise _BadRow(number, str(error)) from None
        open_time = int(moment.timestamp()) * 1000 // MINUTE_MS * MINUTE_MS
        _put(out, open_time, {"open_interest": value}, number, newest=True)
    return out


def add_fields(
    symbol: str, candles: list[Candle], sources: Sequence[Source], names: Sequence[str]
) -> list[Candle]:
    """The candles with the §7b fields of `sources` merged in by minute (a minute without a candle stays
    missing). A field given twice with different values is bad input naming both places."""
    if not sources:
        return candles
    given: dict[int, dict[str, tuple[Any, str]]] = {}
    for source in sources:
        for open_time, (fields, number) in read_fields(source).items():
            minute = given.setdefault(open_time, {})
            for field_name, value in fields.items():
                place = f"{names[source.index] if names else source.path}:{number}"
                known = minute.get(field_name)
                if known is not None and known[0] != value:
                    raise InputError(
                        f"{place}: {symbol} {open_time} {field_name} {value!r} differs from {known[0]!r} at {known[1]}"
                    )
                minute[field_name] = (value, place)
    merged = []
    for candle in candles:
        extra = given.get(candle.open_time)
        if extra:
            current = candle.derivatives or Derivatives()
            for field_name, (value, place) in extra.items():
                have = getattr(current, field_name)
                if have is not None and have != value:
                    raise InputError(
                        f"{place}: {symbol} {candle.open_time} {field_name} {value!r} differs from the "
                        f"candle's {have!r}"
                    )
            current = dataclasses.replace(current, **{name: value for name, (value, _) in extra.items()})
            candle = dataclasses.replace(candle, derivatives=current)
        merged.append(candle)
    return merged


# --- evaluation -------------------------------------------------------------------------------------

Place = tuple[int, int]  # (source index, line); (-1, 0) for candles_1m


@dataclass
class SymbolJob:
    """The candles of one symbol: CSV files to read, JSON Lines candles already read, or `candles_1m`."""

    symbol: str
    csv_sources: list[Source] = field(default_factory=list)
    entries: list[tuple[Candle, Place]] = field(default_factory=list)
    from_database: bool = False
    field_sources: list[Source] = field(default_factory=list)


def merge(symbol: str, entries: list[tuple[Candle, Place]], names: Sequence[str]) -> list[Candle]:
    """Order one symbol's candles by open time; drop equal repeats, refuse different ones naming both."""
    entries.sort(key=lambda entry: (entry[0].open_time, entry[1]))
    merged: list[Candle] = []
    previous: tuple[Candle, Place] | None = None
    for candle, place in entries:
        if previous is not None and previous[0].open_time == candle.open_time:
            if not candle.same_market_data(previous[0]):
                first, second = _where(previous[1], names), _where(place, names)
                raise InputError(
                    f"{second}: {symbol} {candle.open_time} differs from the same minute at {first}"
                )
            continue
        merged.append(candle)
        previous = (candle, place)
    return merged


def _where(place: Place, names: Sequence[str]) -> str:
    index, line = place
    return "candles_1m" if index < 0 else f"{names[index]}:{line}"


CHUNK_BARS = 10_000  # bars decided per numpy pass (bounds memory for long histories)


def evaluate(symbol: str, candles: Iterable[Candle], rules: Sequence[RuleSpec]) -> list[dict[str, Any]]:
    """The alerts of `rules` over one symbol's ordered candles (missing minutes are permanent gaps).

    The bars come from `metrics.replay`; decisions are `evaluate_bar`'s, taken with numpy over chunks of
    bars (`alerts.vectorized.decide_series`, the live engine's fast path too)."""
    vectors = _vectors(rules)
    tracker = CooldownTracker()
    alerts: list[dict[str, Any]] = []
    chunk: list = []

    def decide() -> None:
        rows = [bar.metrics for bar in chunk]
        for index, rule in decide_series(vectors, symbol, [bar.open_time for bar in chunk], rows, tracker):
            bar = chunk[index]
            alerts.append(
                {
                    "rule": rule.slug,
                    "symbol": symbol,
                    "open_time": bar.open_time,
                    "price": bar.price,
                    "metrics": alert_metrics(rule, bar.metrics),
                }
            )
        chunk.clear()

    for bar in replay(candles):
        chunk.append(bar)
        if len(chunk) == CHUNK_BARS:
            decide()
    if chunk:
        decide()
    return alerts


# Rule sets compiled for numpy, least recently used first. Bounded: every rule-editor preview brings a new
# (expression, cooldown), so an unbounded cache would grow with every request for the process's lifetime.
COMPILE_CACHE_SIZE = 64
_compiled: OrderedDict[tuple[str, ...], tuple[VectorRule, ...]] = OrderedDict()


def _vectors(rules: Sequence[RuleSpec]) -> tuple[VectorRule, ...]:
    """The rules compiled for numpy once per process and rule set (while among the recently used)."""
    key = tuple(f"{rule.slug}\0{rule.expression}\0{rule.cooldown_seconds}" for rule in rules)
    vectors = _compiled.get(key)
    if vectors is None:
        vectors = tuple(VectorRule(rule) for rule in rules)
        _compiled[key] = vectors
    _compiled.move_to_end(key)
    while len(_compiled) > COMPILE_CACHE_SIZE:
        _compiled.popitem(last=False)
    return vectors


# Set before the worker processes fork: compiled rules are closures and cannot be pickled.
_RULES: Sequence[RuleSpec] = ()
_NAMES: Sequence[str] = ()


def _run_job(job: SymbolJob) -> tuple[str, list[dict[str, Any]] | None, str | None]:
    try:
        if job.from_database:
            candles = stored_candles(job.symbol)
        else:
            entries = list(job.entries)
            for source in job.csv_sources:
                entries.extend((candle, (source.index, line)) for candle, line in read_source(source))
            candles = add_fields(job.symbol, merge(job.symbol, entries, _NAMES), job.field_sources, _NAMES)
        return job.symbol, evaluate(job.symbol, candles, _RULES), None
    except InputError as error:
        return job.symbol, None, str(error)


def file_jobs(sources: Sequence[Source], symbol: str | None) -> list[SymbolJob]:
    """One job per symbol: CSV files grouped by their symbol, JSON Lines files read now (any symbols)."""
    jobs: dict[str, SymbolJob] = {}
    for source in sources:
        if source.adds_fields:
            jobs.setdefault(source.symbol, SymbolJob(source.symbol)).field_sources.append(source)
        elif source.jsonl:
            for candle, line in read_source(source, only_symbol=symbol):
                job = jobs.setdefault(candle.symbol, SymbolJob(candle.symbol))
                job.entries.append((candle, (source.index, line)))
        else:
            jobs.setdefault(source.symbol, SymbolJob(source.symbol)).csv_sources.append(source)
    return [jobs[name] for name in sorted(jobs) if jobs[name].entries or jobs[name].csv_sources]


def run_jobs(
    jobs: Sequence[SymbolJob],
    rules: Sequence[RuleSpec],
    names: Sequence[str] = (),
    processes: int = 1,
    progress: Callable[[int, int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate every job and return the alerts in §9 order (open time, symbol, rule).

    Raises InputError for the first bad input found; nothing has been written by then."""
    global _RULES, _NAMES
    _RULES, _NAMES = tuple(rules), tuple(names)
    alerts: list[dict[str, Any]] = []
    done = 0
    processes = max(1, min(processes, len(jobs)))
    if processes == 1:
        results: Iterable = map(_run_job, jobs)
        pool = None
    else:
        if any(job.from_database for job in jobs):
            from django.db import connections

            connections.close_all()  # children open their own connections
        pool = multiprocessing.get_context("fork").Pool(processes)
        results = pool.imap_unordered(_run_job, jobs)
    try:
        for _symbol, found, error in results:
            if error is not None:
                raise InputError(error)
            alerts.extend(found)
            done += 1
            if progress:
                progress(done, len(jobs), len(alerts))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    alerts.sort(key=lambda alert: (alert["open_time"], alert["symbol"], alert["rule"]))
    return alerts


def default_processes() -> int:
    """BACKTEST_PROCESSES, else every core this process may use."""
    configured = os.environ.get("BACKTEST_PROCESSES", "").strip()
    if configured:
        return max(1, int(configured))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- output -----------------------------------------------------------------------------------------


def write_alerts(alerts: Sequence[dict[str, Any]], output: str) -> None:
    """JSON Lines, all at once: to a temporary file renamed into place, or to standard output."""
    lines = "".join(json.dumps(alert, allow_nan=False, ensure_ascii=False) + "\n" for alert in alerts)
    if output == "-":
        sys.stdout.write(lines)
        sys.stdout.flush()
        return
    target = Path(output)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(lines, encoding="utf-8")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def summary(alerts: Sequence[dict[str, Any]], rules: Sequence[RuleSpec]) -> list[str]:
    """Alerts per rule (every selected rule listed, zero included) for standard error."""
    counts = Counter(alert["rule"] for alert in alerts)
    symbols: dict[str, set[str]] = {}
    for alert in alerts:
        symbols.setdefault(alert["rule"], set()).add(alert["symbol"])
    lines = [f"{len(alerts)} alert(s) from {len(rules)} rule(s)"]
    for rule in sorted(rules, key=lambda r: r.slug):
        lines.append(
            f"  {rule.slug}: {counts[rule.slug]} alert(s), {len(symbols.get(rule.slug, ()))} symbol(s)"
        )
    return lines


# --- candles_1m (needs Django and the database) -----------------------------------------------------


def stored_symbols(symbol: str | None = None) -> list[str]:
    """Symbols with candles in `candles_1m` (or just `symbol`), in code-point order."""
    from django.db import connections

    with connections["timeseries"].cursor() as cursor:
        if symbol is not None:
            cursor.execute("SELECT DISTINCT symbol FROM candles_1m WHERE symbol = %s", [symbol])
        else:
            cursor.execute("SELECT DISTINCT symbol FROM candles_1m")
        return sorted(row[0] for row in cursor.fetchall())


def stored_candles(symbol: str, newest: int | None = None) -> Iterator[Candle]:
    """One symbol's candles from `candles_1m` in open-time order, exactly as stored; only the `newest`
    ones when given (the rule preview's bound)."""
    from django.db import connections, transaction

    from metrics.selectors import DERIVATIVE_COLUMNS

    columns = (
        "(extract(epoch from time) * 1000)::bigint, open::text, high::text, low::text, close::text, "
        f"volume::text, quote_volume::text, trades, taker_buy_volume::text, taker_buy_quote_volume::text, "
        f"{DERIVATIVE_COLUMNS}"
    )
    if newest is None:
        query, params = f"SELECT {columns} FROM candles_1m WHERE symbol = %s ORDER BY time", [symbol]
    else:
        query = (
            f"SELECT {columns} FROM (SELECT * FROM candles_1m WHERE symbol = %s ORDER BY time DESC LIMIT %s) "
            "AS newest ORDER BY time"
        )
        params = [symbol, newest]
    with transaction.atomic(using="timeseries"), connections["timeseries"].chunked_cursor() as cursor:
        cursor.execute(query, params)
        while rows := cursor.fetchmany(5000):
            for row in rows:
                open_time, o, h, lo, c, v, qv, trades, tbv, tbqv = row[:10]
                candle = Candle.from_payload(
                    {
                        "open_time": open_time,
                        "open": o,
                        "high": h,
                        "low": lo,
                        "close": c,
                        "volume": v,
                        "quote_volume": qv,
                        "trades": trades,
                        "taker_buy_volume": tbv,
                        "taker_buy_quote_volume": tbqv,
                    },
                    symbol=symbol,
                )
                candle.derivatives = Derivatives.parse(row[10:])
                yield candle
