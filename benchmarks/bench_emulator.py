"""Emulator benchmark (docs/emulator.md): frames per second one emulator process serves to 1 and to 10 clients.

The emulator runs as its own process (`manage.py run_emulator`, 600 symbols at speed 1: 2,400 frames/s per
client); each client opens 3 combined-stream connections of 200 streams, as the collector does, and counts
frames. Reported: frames/s received per client and in total, and the emulator process's CPU use (from
/proc, so the clients' own parsing is not counted).

    .venv/bin/python benchmarks/bench_emulator.py [--symbols 600] [--seconds 10] [--clients 1,10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collector.emulator.market import default_symbols  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def client(ws_url: str, symbols: list[str], counts: list[int], index: int, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        chunks = [symbols[i : i + 200] for i in range(0, len(symbols), 200)]

        async def one(chunk):
            streams = "/".join(f"{s.lower()}@kline_1m" for s in chunk)
            async with session.ws_connect(f"{ws_url}/stream?streams={quote(streams, safe='/@')}") as ws:
                while not stop.is_set():
                    try:
                        msg = await asyncio.wait_for(ws.receive(), 1.0)
                    except TimeoutError:
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        return
                    counts[index] += 1

        await asyncio.gather(*(one(chunk) for chunk in chunks))


async def measure(ws_url: str, pid: int, symbols: list[str], clients: int, seconds: float) -> dict:
    counts = [0] * clients
    stop = asyncio.Event()
    tasks = [asyncio.create_task(client(ws_url, symbols, counts, i, stop)) for i in range(clients)]
    await asyncio.sleep(2.0)  # connections open, first ticks out
    start_counts, start_cpu, start = list(counts), cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - start
    got = [c - s for c, s in zip(counts, start_counts, strict=True)]
    cpu = cpu_seconds(pid) - start_cpu
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "clients": clients,
        "per_client": sum(got) / clients / elapsed,
        "total": sum(got) / elapsed,
        "cpu": cpu / elapsed,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", default="1,10")
    args = parser.parse_args()
    symbols = default_symbols(args.symbols)
    with tempfile.TemporaryDirectory() as tmp:
        url_file = Path(tmp) / "emulator.env"
        process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "manage.py"),
                "run_emulator",
                "--port",
                "0",
                "--speed",
                "1",
                "--symbols",
                str(args.symbols),
                "--url-file",
                str(url_file),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            process.stdout.readline()
            values = dict(line.split("=", 1) for line in url_file.read_text().split())
            ws_url = values["BINANCE_WS_URL"]
            print(
                f"emulator: {args.symbols} symbols at speed 1 (target {args.symbols * 4:,} frames/s per client)"
            )
            print("| clients | frames/s per client | frames/s total | emulator CPU (cores) |")
            print("|---|---|---|---|")
            for clients in (int(c) for c in args.clients.split(",")):
                result = await measure(ws_url, process.pid, symbols, clients, args.seconds)
                print(
                    f"| {result['clients']} | {result['per_client']:,.0f} | {result['total']:,.0f} | "
                    f"{result['cpu']:.2f} |",
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
