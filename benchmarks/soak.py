"""`make soak`: the whole system at Binance's real cadence for a long run; memory and queues must stay flat.

600 symbols from the emulator at speed 1 (a kline update per symbol every 250 ms, 2,400 frames/s), every
worker as its own process on private servers and the product's own upkeep intervals. It starts cold (empty
database: the collector backfills two days of every symbol) and first waits until the pipeline has caught
up (JetStream backlog below one minute's candles three samples in a row), then measures for 30 minutes by
default. Every 10 s it samples the resident memory of each process and the JetStream backlog; at the end
it writes var/soak/soak.csv and var/soak/soak.svg (memory per process over time, catch-up included) and
fails when, over the measured minutes, the backlog or a process's memory kept growing.

    .venv/bin/python benchmarks/soak.py [--symbols 600] [--minutes 30] [--catch-up-minutes 40]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptomon.settings")

from tests.e2e_system import System  # noqa: E402

OUT = ROOT / "var" / "soak"


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (daphne and celery fork)."""
    total = 0
    for candidate in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{candidate}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    result = [int(c) for c in found]
    for child in list(result):
        result += children(child)
    return result


def growing(values: list[float], tolerance: float, slack: float = 1.0) -> bool:
    """True when the last quarter's mean is above the second quarter's by more than `tolerance` (a
    fraction) plus `slack` (absolute)."""
    if len(values) < 8:
        return False
    quarter = len(values) // 4
    second = sum(values[quarter : 2 * quarter]) / quarter
    last = sum(values[-quarter:]) / quarter
    return last > second * (1 + tolerance) + slack


def write_svg(rows: list[dict], names: list[str], path: Path) -> None:
    width, height, pad = 900, 420, 50
    t_max = max(r["seconds"] for r in rows) or 1
    m_max = max(max(r[n] for n in names) for r in rows) or 1
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<text x="{pad}" y="20">resident memory (MiB) per process over {t_max / 60:.0f} min</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
        f'<text x="5" y="{pad}">{m_max:.0f}</text><text x="5" y="{height - pad}">0</text>',
    ]
    for i, name in enumerate(names):
        points = " ".join(
            f"{pad + r['seconds'] / t_max * (width - 2 * pad):.1f},{height - pad - r[name] / m_max * (height - 2 * pad):.1f}"
            for r in rows
        )
        colour = colours[i % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
        parts.append(f'<text x="{width - pad + 5 - 40}" y="{pad + 15 * i}" fill="{colour}">{name}</text>')
    steady_from = next((r["seconds"] for r in rows if r.get("phase") == "steady"), None)
    if steady_from is not None:
        x = pad + steady_from / t_max * (width - 2 * pad)
        parts.append(
            f'<line x1="{x:.1f}" y1="{pad}" x2="{x:.1f}" y2="{height - pad}" stroke="grey" stroke-dasharray="4"/>'
            f'<text x="{x + 4:.1f}" y="{pad + 12}" fill="grey">caught up: measured from here</text>'
        )
    parts.append("</svg>")
    path.write_text("\n".join(parts))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=600)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--catch-up-minutes", type=float, default=40, help="give up if not caught up by then")
    args = parser.parse_args()
    symbols = [f"SOAK{i:03d}USDT" for i in range(args.symbols)]
    OUT.mkdir(parents=True, exist_ok=True)
    system = System(
        Path(tempfile.mkdtemp(prefix="cryptomon-soak-")), symbols=symbols, speed=1.0, fast_upkeep=False
    )
    rows: list[dict] = []
    try:
        system.start_servers()
        system.start_all()
        started = time.monotonic()
        names = list(system.processes)

        def sample(phase: str) -> dict:
            time.sleep(10)
            system.assert_running()
            row = {"seconds": round(time.monotonic() - started), "phase": phase}
            for name in names:
                row[name] = round(rss_mib(system.processes[name].popen.pid), 1)
            row["backlog"] = asyncio.run(system.pending_messages())
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            return row

        caught_up = 0
        while caught_up < 3:
            if time.monotonic() - started > args.catch_up_minutes * 60:
                print(f"not caught up after {args.catch_up_minutes} min: the pipeline cannot keep up")
                return 1
            caught_up = caught_up + 1 if sample("catch-up")["backlog"] < args.symbols else 0
        catch_up_seconds = time.monotonic() - started
        print(f"caught up after {catch_up_seconds / 60:.1f} min; measuring {args.minutes} min", flush=True)
        while time.monotonic() - started - catch_up_seconds < args.minutes * 60:
            sample("steady")
    finally:
        system.stop()
    with (OUT / "soak.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_svg(rows, names, OUT / "soak.svg")
    steady = [r for r in rows if r["phase"] == "steady"]
    problems = [name for name in names if growing([r[name] for r in steady], 0.10)]
    if growing([float(r["backlog"]) for r in steady], 0.0, slack=args.symbols):  # one minute's burst
        problems.append("JetStream backlog")
    peaks = ", ".join(f"{name} {max(r[name] for r in steady):.0f}" for name in names)
    print(
        f"steady state ({len(steady)} samples): peak RSS MiB {peaks}; backlog max {max(r['backlog'] for r in steady)}"
    )
    print(f"wrote {OUT / 'soak.csv'} and {OUT / 'soak.svg'}; growing: {problems or 'nothing'}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
