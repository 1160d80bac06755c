"""The whole product as separate processes on servers of its own, for the end-to-end tests (docs/operations.md).

A `System` owns a private PostgreSQL, NATS and Valkey (so restarting them disturbs no other test), the
Binance emulator, and every worker started with `manage.py` exactly as an operator would run them. Tests
read the outcome the way a user or an outside check would: the database, the emulator's REST klines,
the backtest command and a WebSocket client speaking docs/contract.md §10.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from cryptomon import embedded

ROOT = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(ROOT / "manage.py")]

# Delays that production keeps long, shortened so a fault is recovered from within seconds.
FAST_UPKEEP = {  # periodic work made frequent so tests see it within seconds (benchmarks keep defaults)
    "BINANCE_WATCHDOG_SECONDS": "5",
    "COLLECTOR_HOLE_SCAN_SECONDS": "5",
    "COLLECTOR_UNIVERSE_REFRESH_SECONDS": "5",
    "METRICS_GAP_TIMEOUT_SECONDS": "60",
    "ALERTS_RULE_RELOAD_SECONDS": "0.5",
}
FAST_SETTINGS = {
    "BINANCE_BACKOFF_BASE_SECONDS": "0.05",
    "BINANCE_BACKOFF_CAP_SECONDS": "1",
    "NOTIFICATIONS_GROUP_SECONDS": "0",
    "ALLOW_ANONYMOUS_DASHBOARD": "true",
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "SECRET_KEY": "end-to-end-test-secret",
    # Plain HTTP on 127.0.0.1 with explicit server URLs: not the embedded mode, so say so (docs/security.md).
    "SECURE_SSL_REDIRECT": "false",
    "SESSION_COOKIE_SECURE": "false",
    "CSRF_COOKIE_SECURE": "false",
    "SECURE_HSTS_SECONDS": "0",
}


@dataclass
class Process:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)


class System:
    def __init__(
        self,
        var_dir: Path,
        *,
        symbols: list[str],
        speed: float,
        scenarios: list[Path] = (),
        emulator_args: list[str] = (),
        fast_upkeep: bool = True,
    ):
        self.var_dir = var_dir
        self.emulator_args = list(emulator_args)
        self.fast_upkeep = fast_upkeep
        self.symbols = symbols
        self.speed = speed
        self.scenarios = list(scenarios)
        self.servers: dict[str, dict] = {}
        self.processes: dict[str, Process] = {}
        self.stopped: set[str] = set()
        self.emulator_port = embedded.free_port()
        self.web_port = embedded.free_port()
        self.env: dict[str, str] = {}

    # --- servers
    def start_servers(self) -> None:
        (self.var_dir / "logs").mkdir(parents=True, exist_ok=True)
        for server in embedded.SERVERS:
            if server.name in self.own_servers:
                self.servers[server.name] = server.start(self.var_dir, durable=False)
        environ = {key: value for key, value in os.environ.items() if key not in _PARENT_ONLY}
        self.env = {
            **environ,
            **FAST_SETTINGS,
            **(FAST_UPKEEP if self.fast_upkeep else {}),
            "DATABASE_URL": self.servers["postgres"]["url"],
            "TIMESERIES_DATABASE_URL": self.servers["postgres"]["url"],
            "NATS_URL": self.nats_url,
            "REDIS_URL": self.servers["valkey"]["url"],
            "CRYPTOMON_VAR_DIR": str(self.var_dir),
            "BINANCE_REST_URL": self.rest_url,
            "BINANCE_WS_URL": f"ws://127.0.0.1:{self.emulator_port}/market",
            "PYTHONUNBUFFERED": "1",
        }
        self.manage("migrate", "--noinput")

    own_servers = ("postgres", "nats", "valkey")  # which of embedded.SERVERS start_servers starts

    @property
    def nats_url(self) -> str:
        return self.servers["nats"]["url"]

    def restart_server(self, name: str) -> None:
        server = next(s for s in embedded.SERVERS if s.name == name)
        self.servers[name] = server.restart(self.var_dir, self.servers[name], durable=False)

    def stop_server(self, name: str) -> None:
        """Take a server down (its state is kept for `start_server`, at the same address)."""
        server = next(s for s in embedded.SERVERS if s.name == name)
        server.stop(self.servers[name])

    def start_server(self, name: str) -> None:
        server = next(s for s in embedded.SERVERS if s.name == name)
        self.servers[name] = server.start(self.var_dir, durable=False, port=self.servers[name].get("port"))

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.popen and process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            if process.popen:
                try:
                    process.popen.wait(15)
                except subprocess.TimeoutExpired:
                    process.popen.kill()
                    process.popen.wait()
        for server in reversed(embedded.SERVERS):
            if server.name in self.servers:
                server.stop(self.servers.pop(server.name))

    # --- processes
    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.web_port}/ws/alerts/"

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*MANAGE, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, check=check, timeout=600
        )

    def define(self) -> None:
        emulator = ["run_emulator", "--host", "127.0.0.1", "--port", str(self.emulator_port)]
        emulator += ["--speed", str(self.speed), "--seed", "7", "--symbols", ",".join(self.symbols)]
        for scenario in self.scenarios:
            emulator += ["--scenario", str(scenario)]
        emulator += self.emulator_args
        web = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.web_port)]
        commands = {
            "emulator": [*MANAGE, *emulator],
            "collector": [*MANAGE, "run_collector"],
            "metrics": [*MANAGE, "run_metrics"],
            "alerts": [*MANAGE, "run_alerts"],
            "gateway": [*MANAGE, "run_gateway"],
            "web": [*web, "cryptomon.asgi:application"],
        }
        for name, argv in commands.items():
            self.processes[name] = Process(name, argv, self.var_dir / "logs" / f"{name}.log")

    def start(self, name: str) -> None:
        process = self.processes[name]
        self.stopped.discard(name)
        log = process.log.open("a")
        process.popen = subprocess.Popen(
            process.argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def start_all(self) -> None:
        self.define()
        for name in self.processes:
            self.start(name)
        wait_until(lambda: embedded._port_open(self.emulator_port), "the emulator to listen", 60)
        wait_until(lambda: embedded._port_open(self.web_port), "the web server to listen", 60)

    def kill(self, name: str) -> None:
        """kill -9: the process gets no chance to clean up."""
        popen = self.processes[name].popen
        popen.kill()
        popen.wait()
        self.stopped.add(name)

    def terminate(self, name: str) -> None:
        """A clean stop (SIGTERM), as an operator's; the process is not expected to run after it."""
        popen = self.processes[name].popen
        popen.send_signal(signal.SIGTERM)
        popen.wait(30)
        self.stopped.add(name)

    def assert_running(self) -> None:
        dead = {
            name: p.popen.returncode
            for name, p in self.processes.items()
            if name not in self.stopped and p.popen.poll() is not None
        }
        assert not dead, f"processes exited: {dead}\n{self.logs(*dead)}"

    def wait_until(self, check, what: str, timeout: float):
        """Like `wait_until`, but a worker that exits fails at once, and a timeout shows every log's tail."""

        def running_and_checked():
            self.assert_running()
            return check()

        try:
            return wait_until(running_and_checked, what, timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}\nlogs under {self.var_dir / 'logs'}:\n{self.logs()}") from None

    def log_count(self, name: str, text: str) -> int:
        """How many lines of a process's log contain `text`."""
        with contextlib.suppress(OSError):
            return self.processes[name].log.read_text(errors="replace").count(text)
        return 0

    def logs(self, *names: str, tail: int = 60) -> str:
        out = []
        for name in names or self.processes:
            with contextlib.suppress(OSError):
                lines = self.processes[name].log.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"--- {name}\n" + "\n".join(lines))
        return "\n".join(out)

    # --- what a user or an outside check can read
    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        url = self.servers["postgres"]["url"]
        with psycopg.connect(url) as conn:
            return conn.execute(query, params).fetchall()

    def venue_time(self) -> int:
        with urllib.request.urlopen(f"{self.rest_url}/fapi/v1/time", timeout=10) as response:
            return json.load(response)["serverTime"]

    def venue_klines(self, symbol: str, start: int, end: int) -> list[list]:
        rows: list[list] = []
        while start <= end:
            query = (
                f"symbol={urllib.parse.quote(symbol)}&interval=1m&startTime={start}&endTime={end}&limit=1500"
            )
            with urllib.request.urlopen(f"{self.rest_url}/fapi/v1/klines?{query}", timeout=30) as response:
                page = json.load(response)
            if not page:
                break
            rows.extend(page)
            start = page[-1][0] + 60_000
        return rows

    async def pending_messages(self) -> int:
        """Messages any durable JetStream consumer has not yet acknowledged (0 = the pipeline is drained)."""
        from cryptomon import messaging

        nc = await messaging.connect("e2e-check", self.nats_url)
        try:
            js = nc.jetstream()
            pending = 0
            for stream in ("CANDLES", "METRICS", "ALERTS"):
                with contextlib.suppress(Exception):
                    for consumer in await js.consumers_info(stream):
                        pending += consumer.num_pending + consumer.num_ack_pending
            return pending
        finally:
            await nc.close()

    def wait_drained(self, timeout: float = 180) -> None:
        """Until every consumer has acknowledged everything, twice in a row a second apart."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 2:
            self.assert_running()
            assert time.monotonic() < deadline, f"pipeline not drained\n{self.logs()}"
            quiet = quiet + 1 if asyncio.run(self.pending_messages()) == 0 else 0
            time.sleep(1)


_PARENT_ONLY = {
    "DATABASE_URL",
    "TIMESERIES_DATABASE_URL",
    "NATS_URL",
    "REDIS_URL",
    "CRYPTOMON_VAR_DIR",
    "CRYPTOMON_EMBEDDED",
    "CRYPTOMON_EMBEDDED_STARTED",
    "DJANGO_SETTINGS_MODULE",
}


def wait_until(check, what: str, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class FeedClient:
    """A browser's view of `/ws/alerts/` (docs/contract.md §10), kept in a background thread with reconnects."""

    def __init__(self, url: str, origin: str):
        self.url = url
        self.origin = origin
        self.frames: list[dict] = []
        self.connections = 0
        self._stop = False
        self._thread = None

    def start(self) -> None:
        import threading

        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        if self._thread:
            self._thread.join(10)

    async def _run(self) -> None:
        import websockets

        while not self._stop:
            try:
                async with websockets.connect(self.url, origin=self.origin, open_timeout=5) as socket:
                    self.connections += 1
                    subscription = {"type": "subscribe", "symbols": None, "rules": None, "market": True}
                    await socket.send(json.dumps(subscription))
                    while not self._stop:
                        with contextlib.suppress(TimeoutError):
                            raw = await asyncio.wait_for(socket.recv(), 0.5)
                            self.frames.append(json.loads(raw))
            except (OSError, TimeoutError, websockets.WebSocketException):
                await asyncio.sleep(0.3)

    def wait_for_new(self, kind: str, what: str, system: System, timeout: float = 60) -> dict:
        """Until a frame of that kind arrives after now; the frame. A timeout shows the system's logs."""
        seen = len(self.of_type(kind))
        system.wait_until(lambda: len(self.of_type(kind)) > seen, what, timeout)
        return self.of_type(kind)[seen]

    def newest_market_time(self) -> int:
        """The newest open_time in any market row received so far (0 before the first)."""
        return max((row["open_time"] for frame in self.of_type("market") for row in frame["rows"]), default=0)

    def of_type(self, kind: str) -> list[dict]:
        return [frame for frame in list(self.frames) if frame.get("type") == kind]

    def alerts(self) -> list[dict]:
        live = [frame["alert"] for frame in self.of_type("alert")]
        live += [alert for frame in self.of_type("alerts") for alert in frame["alerts"]]  # §10: oldest first
        snapshotted = [alert for frame in self.of_type("snapshot") for alert in frame["alerts"]]
        return live + snapshotted
