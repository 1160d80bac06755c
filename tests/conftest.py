"""Shared fixtures. The servers themselves come from the `cryptomon.testing` plugin (real, never fakes)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, settings

from cryptomon import embedded, messaging
from cryptomon.contract import subjects

ROOT = Path(__file__).resolve().parent.parent

# The hostile-input suite (tests/test_hostile_*.py, docs/security.md "Hostile inputs") runs its Hypothesis
# tests under `hostile` in the normal test run and under `fuzz` with `make fuzz` (HYPOTHESIS_PROFILE=fuzz).
# Never a timing deadline: the machine is shared. Examples share a test's fixtures (a signed-in client, a
# socket's user) on purpose, hence the function-scoped-fixture check is off.
_FUZZ_CHECKS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("hostile", max_examples=25, deadline=None, suppress_health_check=_FUZZ_CHECKS)
settings.register_profile("fuzz", max_examples=2000, deadline=None, suppress_health_check=_FUZZ_CHECKS)


@pytest_asyncio.fixture
async def jetstream():
    """A NATS connection with the three streams freshly created (previous tests' messages removed)."""
    nc = await messaging.connect("test")
    js = nc.jetstream()
    for name in subjects.STREAMS:
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
    await messaging.ensure_streams(js)
    yield nc, js
    await nc.close()


@pytest.fixture
def redis_client():
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.close()


class PrivateServer:
    """An embedded server of the test's own (NATS or Valkey), which the test may stop and start again on the
    same port, as after a real server restart (NATS keeps its store; Valkey keeps nothing)."""

    def __init__(self, var_dir: Path, server: embedded._Server):
        self.var_dir = var_dir
        self.server = server
        self.state: dict = {}
        self.port: int | None = None

    @property
    def url(self) -> str:
        """With the embedded credentials, like every embedded server's URL."""
        return self.state["url"]

    def start(self) -> None:
        self.state = self.server.start(self.var_dir, durable=False, port=self.port)
        self.port = self.state["port"]

    def stop(self) -> None:
        self.server.stop(self.state)


@pytest.fixture
def private_nats(tmp_path):
    server = PrivateServer(tmp_path, embedded._Nats("nats", "NATS_URL"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_valkey(tmp_path):
    server = PrivateServer(tmp_path, embedded._Valkey("valkey", "REDIS_URL"))
    server.start()
    yield server
    server.stop()


def run_manage(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python manage.py ...` as a separate process, the way an operator would."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
