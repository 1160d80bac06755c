"""pytest plugin (`-p cryptomon.testing`): real servers for the test session (docs/contract.md §3).

With no server URLs configured, the session starts its own PostgreSQL, NATS and Valkey in a temporary
directory before Django's settings load, and stops them at the end. The time-series alias gets its
own database so every test exercises the router's split.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_session: dict = {}
_basetemp: dict = {}


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    from cryptomon import embedded

    if not any(os.environ.get(var) for var in embedded.SERVER_URL_VARS):
        var_dir = Path(tempfile.mkdtemp(prefix="cryptomon-test-"))
        os.environ["CRYPTOMON_VAR_DIR"] = str(var_dir)
        started = embedded.configure_environment(var_dir, durable=False)
        _session.update(var_dir=var_dir, started=started)
        os.environ["TIMESERIES_DATABASE_URL"] = _second_database(os.environ["DATABASE_URL"])
    os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
    # The test client and the browser tests speak plain HTTP, even against servers given by URL.
    for name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
        os.environ.setdefault(name, "false")
    os.environ.setdefault("SECURE_HSTS_SECONDS", "0")
    return (yield)


def _second_database(url: str) -> str:
    """Create `<name>_ts` beside the embedded database and return its URL."""
    import psycopg

    ts_url = url.replace(f"/{_database_name(url)}?", f"/{_database_name(url)}_ts?")
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [f"{_database_name(url)}_ts"]
        ).fetchone():
            conn.execute(f'CREATE DATABASE "{_database_name(url)}_ts"')
    return ts_url


def _database_name(url: str) -> str:
    return url.split("/")[3].split("?")[0]


def _libpq(url: str) -> str:
    from psycopg.conninfo import make_conninfo

    from cryptomon.config import database_from_url

    db = database_from_url("DATABASE_URL", url)
    return make_conninfo(
        host=db["HOST"], port=db["PORT"], user=db["USER"], password=db["PASSWORD"], dbname=db["NAME"]
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Each session's tmp_path directories under a root of its own.

    pytest's default root (/tmp/pytest-of-<user>) is shared by every session of the user and each one
    deletes all but the newest three numbered directories: a session running beside others (CI beside a
    developer, several jobs on one machine) had its servers' data directories deleted under it."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="cryptomon-pytest-")
        _basetemp.update(path=Path(config.option.basetemp))


def pytest_sessionfinish(session, exitstatus):
    """Keep a failed session's directories (the end-to-end tests' process logs are there); else remove."""
    path = _basetemp.pop("path", None)
    if path is None:
        return
    if exitstatus == 0:
        shutil.rmtree(path, ignore_errors=True)
    else:
        session.config.get_terminal_writer().line(f"cryptomon: test directories and logs kept in {path}")


def pytest_unconfigure(config):
    if not _session:
        return
    from cryptomon import embedded

    embedded.stop_servers(_session["var_dir"], _session["started"])
    shutil.rmtree(_session["var_dir"], ignore_errors=True)
    _session.clear()
