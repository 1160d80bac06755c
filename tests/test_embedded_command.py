"""`manage.py embedded status|stop`, and `--help` that starts nothing (docs/operations.md).

Each test uses a var dir of its own and runs manage.py as an operator would, with no server configured:
the way a one-off command on a fresh checkout starts (or here, must not start) the embedded servers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cryptomon import embedded

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_STATE = ("embedded.json", "embedded.env", embedded.CREDENTIALS_FILE, "postgres", "nats", "valkey")


def manage(var_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """manage.py with no server URLs in the environment: the embedded default, in `var_dir`."""
    unset = {*embedded.SERVER_URL_VARS, "TIMESERIES_DATABASE_URL", "CRYPTOMON_EMBEDDED"}
    unset.add("CRYPTOMON_EMBEDDED_STARTED")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    env["CRYPTOMON_VAR_DIR"] = str(var_dir)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def processes_using(var_dir: Path) -> list[str]:
    """Command lines of running processes that name `var_dir` (every embedded server's does)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(var_dir) in cmdline:
            found.append(cmdline)
    return found


def leave_servers_running(var_dir: Path) -> None:
    """What a one-off command does on a fresh checkout: start the embedded servers and leave them running.
    (check_infra's database checks fail on an unmigrated database; the servers are what matters here.)"""
    result = manage(var_dir, "check_infra")
    assert "✓ NATS" in result.stdout, result.stdout + result.stderr
    assert set(embedded._read_state(var_dir)) == {"postgres", "nats", "valkey"}


@pytest.fixture
def var_dir(tmp_path):
    path = tmp_path / "var"
    yield path
    embedded.stop_servers(path)


@pytest.mark.parametrize("command", ["backtest", "migrate", "createsuperuser", "run_monitor"])
def test_help_of_a_command_starts_no_server_and_writes_no_embedded_state(var_dir, command):
    result = manage(var_dir, command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: manage.py {command}" in result.stdout
    assert not [name for name in EMBEDDED_STATE if (var_dir / name).exists()]
    assert processes_using(var_dir) == []


def test_embedded_status_shows_each_running_server_with_its_address_and_pid_and_no_password(var_dir):
    leave_servers_running(var_dir)
    state = embedded._read_state(var_dir)
    started = ["postgres", "nats", "valkey"]

    result = manage(var_dir, "embedded", "status")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    for name in started:
        assert re.search(rf"\brunning\b.*\bpid {state[name]['pid']}\b", lines[name]), lines[name]
    assert f"127.0.0.1:{state['nats']['port']}" in lines["nats"]
    assert f"127.0.0.1:{state['valkey']['port']}" in lines["valkey"]
    assert state["postgres"]["socket_dir"] in lines["postgres"]
    for password in embedded.credentials(var_dir).values():
        assert password not in result.stdout


def test_embedded_status_says_which_server_died_and_stop_stops_the_rest_keeping_the_data(var_dir):
    leave_servers_running(var_dir)
    state = embedded._read_state(var_dir)
    os.kill(state["valkey"]["pid"], signal.SIGKILL)
    assert manage(var_dir, "embedded", "status").stdout.split("valkey", 1)[1].split()[0] == "stopped"

    result = manage(var_dir, "embedded", "stop")
    assert result.returncode == 0, result.stderr
    assert "stopped nats, postgres" in result.stdout
    assert processes_using(var_dir) == []
    assert (var_dir / "postgres" / "PG_VERSION").exists()  # data kept
    assert "no embedded servers recorded" in manage(var_dir, "embedded", "status").stdout
    assert "no embedded server was running" in manage(var_dir, "embedded", "stop").stdout


def test_embedded_stop_on_a_fresh_checkout_starts_nothing(var_dir):
    assert "no embedded server was running" in manage(var_dir, "embedded", "stop").stdout
    assert not [name for name in EMBEDDED_STATE if (var_dir / name).exists()]
