"""`python manage.py run_monitor`: the whole system on one machine, in one command.

Starts (or reuses) the embedded servers, migrates, then runs every worker and the ASGI server as child
processes with one log stream prefixed by process. A child that dies is restarted with backoff;
Ctrl-C stops the children, then the embedded servers this command started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand

from cryptomon.embedded import free_port
from gateway import serving

MANAGE = [sys.executable, str(settings.BASE_DIR / "manage.py")]
DEMO_SYMBOLS = 60  # the demo's market size unless --symbols says otherwise


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    env: dict = field(default_factory=dict)
    pass_fds: tuple[int, ...] = ()


class Command(BaseCommand):
    help = "Run cryptomon on this machine: servers, migrations, workers, web."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--demo", action="store_true", help="run the emulator with scenarios; anonymous viewing"
        )
        parser.add_argument("--speed", type=float, default=1.0, help="emulator speed factor with --demo")
        parser.add_argument("--symbols", default="", help="limit the universe: a number (demo) or SYM,SYM")
        parser.add_argument("--no-workers", action="store_true", help="web app only")
        parser.add_argument(
            "--web-workers",
            type=int,
            default=1,
            help="daphne processes sharing one listening socket (docs/gateway.md)",
        )

    def handle(self, *args, **options):
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        call_command("migrate", interactive=False, verbosity=0)
        if not settings.TIMESERIES_SHARED:
            call_command("migrate", database="timeseries", interactive=False, verbosity=0)
        env = {}
        if options["demo"]:
            env["ALLOW_ANONYMOUS_DASHBOARD"] = "true"
            # The demo is served over plain HTTP here, even with server URLs given (docs/security.md).
            for name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
                env[name] = os.environ.get(name, "false")
            env["SECURE_HSTS_SECONDS"] = os.environ.get("SECURE_HSTS_SECONDS", "0")
        children = self._children(options, env)
        # Both stop everything; SIGINT explicitly, since a shell may start us with it ignored.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.stopping.set())
        url = f"http://{options['host']}:{options['port']}/"
        try:
            for child in children:
                self._start(child)
            self.stdout.write(f"cryptomon is running at {url} (Ctrl-C stops it)")
            self.stdout.flush()
            self._supervise(children)
        except KeyboardInterrupt:
            pass
        finally:
            self.stopping.set()
            self._stop_all(children)
            started = [name for name in os.environ.get("CRYPTOMON_EMBEDDED_STARTED", "").split(",") if name]
            if started:
                from cryptomon.embedded import stop_servers

                stop_servers(names=started)
            self.stdout.write("cryptomon stopped")

    def _children(self, options, env) -> list[Child]:
        commands = get_commands()
        children: list[Child] = []
        collector_args: list[str] = []
        symbols = options["symbols"].strip()
        if options["demo"] and "run_emulator" in commands:
            # The emulator comes first, on a port chosen here, and the collector is pointed at it.
            port = free_port()
            emulator = [*MANAGE, "run_emulator", "--host", "127.0.0.1", "--port", str(port)]
            emulator += ["--speed", str(options["speed"]), "--symbols", symbols or str(DEMO_SYMBOLS)]
            # A fixed t0 keeps the market's history the same if the supervisor restarts the emulator.
            emulator += ["--t0", str(int(time.time() * 1000))]
            emulator.append("--presets")  # the scenarios that make every preset fire (docs/emulator.md)
            children.append(Child("emulator", emulator))
            env["BINANCE_REST_URL"] = f"http://127.0.0.1:{port}"
            env["BINANCE_WS_URL"] = f"ws://127.0.0.1:{port}/market"
        elif symbols:
            collector_args = ["--symbols", symbols]
        if options["web_workers"] > 1:  # bound once here; every daphne adopts it (gateway.serving)
            self.listener = serving.listen(options["host"], options["port"])
            fd = self.listener.fileno()
            for n in range(1, options["web_workers"] + 1):
                children.append(Child(f"web{n}", serving.daphne_argv(self.listener), env=env, pass_fds=(fd,)))
        else:
            children.append(
                Child(
                    "web",
                    [
                        sys.executable,
                        "-m",
                        "daphne",
                        "-b",
                        options["host"],
                        "-p",
                        str(options["port"]),
                        "cryptomon.asgi:application",
                    ],
                    env=env,
                )
            )
        if not options["no_workers"]:
            for name in ("run_collector", "run_metrics", "run_alerts", "run_gateway"):
                if name in commands:
                    extra = collector_args if name == "run_collector" else []
                    children.append(Child(name.removeprefix("run_"), [*MANAGE, name, *extra]))
            children.append(
                Child(
                    "celery",
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "cryptomon.celery",
                        "worker",
                        "--beat",
                        "--loglevel",
                        "INFO",
                        "--concurrency",
                        "2",
                    ],
                )
            )
        for child in children:
            child.env = {**env, **child.env}
        return children

    def _start(self, child: Child) -> None:
        child.process = subprocess.Popen(
            child.argv,
            cwd=settings.BASE_DIR,
            env={**os.environ, **child.env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            pass_fds=child.pass_fds,
        )
        child.started_at = time.monotonic()
        threading.Thread(target=self._pump, args=(child, child.process), daemon=True).start()

    def _pump(self, child: Child, process: subprocess.Popen) -> None:
        width = 10
        for line in process.stdout:
            with self.lock:
                self.stdout.write(f"{child.name:<{width}}| {line.rstrip()}")
                self.stdout.flush()

    def _supervise(self, children: list[Child]) -> None:
        while not self.stopping.wait(0.5):
            for child in children:
                code = child.process.poll()
                if code is None:
                    continue
                delay = min(30.0, 2.0 ** min(child.restarts, 5))
                if time.monotonic() - child.started_at > 60:
                    child.restarts, delay = 0, 1.0
                self.stderr.write(f"{child.name} exited with {code}; restarting in {delay:.0f} s")
                if self.stopping.wait(delay):
                    return
                child.restarts += 1
                self._start(child)

    def _stop_all(self, children: list[Child]) -> None:
        for child in reversed(children):
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 15
        for child in children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
