"""`python manage.py run_emulator`: the Binance stand-in as a process (docs/emulator.md). Needs no server."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from collector.emulator import EmulatorServer, ScenarioError, load_file

PRESETS = Path(__file__).resolve().parents[2] / "emulator" / "scenarios"


class Command(BaseCommand):
    help = "Run the Binance USDⓈ-M emulator (REST + WebSocket + control API) on one port."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9100, help="0: any free port (printed on start)")
        parser.add_argument("--speed", type=float, default=1.0, help="venue minutes per wall minute")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--symbols", default="50", help="a count, or SYM,SYM,...")
        parser.add_argument("--scenario", action="append", default=[], metavar="FILE", help="JSON/YAML")
        parser.add_argument("--presets", action="store_true", help=f"also load {PRESETS}/*.json")
        parser.add_argument("--t0", type=int, default=None, help="venue time at start (ms; default now)")
        parser.add_argument("--history-minutes", type=int, default=3000)
        parser.add_argument("--weight-limit", type=int, default=2400)
        parser.add_argument("--url-file", default="", help="write BINANCE_REST_URL/BINANCE_WS_URL lines here")

    def handle(self, *args, **options):
        if options["speed"] <= 0:
            raise CommandError("--speed must be > 0")
        text = options["symbols"].strip()
        if text.isdigit():
            symbols: list[str] | int = int(text)
            if symbols < 1:
                raise CommandError("--symbols must be at least 1")
        else:
            symbols = [s.strip() for s in text.split(",") if s.strip()]
            if not symbols:
                raise CommandError("--symbols: give a count or SYM,SYM")
        scenarios = []
        try:
            for path in options["scenario"]:
                scenarios += load_file(path)
        except ScenarioError as error:
            raise CommandError(str(error)) from None
        presets = []
        if options["presets"]:
            for path in sorted(PRESETS.glob("*.json")):
                try:
                    presets += [(path, spec) for spec in load_file(path)]
                except ScenarioError as error:
                    self.stderr.write(f"preset skipped: {error}")
        try:
            server = EmulatorServer(
                symbols=symbols,
                speed=options["speed"],
                seed=options["seed"],
                t0_ms=options["t0"],
                host=options["host"],
                port=options["port"],
                scenarios=scenarios,
                history_minutes=options["history_minutes"],
                weight_limit=options["weight_limit"],
            )
        except (ScenarioError, ValueError) as error:
            raise CommandError(str(error)) from None
        for path, spec in presets:
            try:
                server.add_scenario(spec)
            except ScenarioError as error:
                self.stderr.write(f"preset {path.name} skipped: {error}")
        asyncio.run(self._serve(server, options["url_file"]))

    async def _serve(self, server: EmulatorServer, url_file: str) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
        except OSError as error:
            raise CommandError(f"cannot listen on {server.host}:{server.port}: {error.strerror}") from None
        try:
            if url_file:
                path = Path(url_file)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"BINANCE_REST_URL={server.rest_url}\nBINANCE_WS_URL={server.ws_url}\n")
            market = server.market
            self.stdout.write(
                f"emulator listening rest={server.rest_url} ws={server.ws_url} "
                f"speed={market.speed:g} seed={market.seed} symbols={len(market.names)} t0={market.t0_ms}"
            )
            self.stdout.flush()
            await stop.wait()
        finally:
            await server.stop()
