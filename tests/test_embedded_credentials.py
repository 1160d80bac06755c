"""The embedded servers are not open to every local user.

Each test starts its own PostgreSQL, NATS and Valkey in a var dir of its own, the way the first command
on a fresh checkout does, and talks to them as another local user would: without credentials.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import nats
import psycopg
import pytest
import redis
from nats.errors import Error as NatsError

from cryptomon import embedded
from cryptomon.config import database_from_url


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _env_file(var_dir: Path) -> dict[str, str]:
    lines = (var_dir / "embedded.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line)


@pytest.fixture
def var_dir(tmp_path):
    path = tmp_path / "var"
    yield path
    embedded.stop_servers(path)


async def _nats_answers(url: str) -> bool:
    connection = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)
    await connection.flush()
    await connection.close()
    return True


def _assert_closed_without_credentials(urls: dict[str, str]) -> None:
    db = database_from_url("DATABASE_URL", urls["DATABASE_URL"])
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host=db["HOST"], port=db["PORT"], user="postgres", dbname=db["NAME"]).close()
    valkey = redis.Redis.from_url(urls["REDIS_URL"].replace(f":{redis_password(urls)}@", ""))
    with pytest.raises(redis.AuthenticationError):
        valkey.ping()


def redis_password(urls: dict[str, str]) -> str:
    from urllib.parse import urlsplit

    return urlsplit(urls["REDIS_URL"]).password or ""


async def test_each_server_refuses_a_connection_without_credentials_and_accepts_the_urls_in_embedded_env(
    var_dir,
):
    urls, _ = embedded.ensure_servers(var_dir, durable=False)

    assert _env_file(var_dir) == urls
    _assert_closed_without_credentials(urls)
    port = urls["NATS_URL"].rsplit(":", 1)[1]
    with pytest.raises(NatsError):
        await _nats_answers(f"nats://127.0.0.1:{port}")
    with pytest.raises(NatsError):
        await _nats_answers(f"nats://cryptomon:wrong@127.0.0.1:{port}")

    with psycopg.connect(urls["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert redis.Redis.from_url(urls["REDIS_URL"]).ping()
    assert await _nats_answers(urls["NATS_URL"])


def test_credentials_and_urls_are_readable_by_their_owner_only_and_the_socket_dir_is_closed(var_dir):
    embedded.ensure_servers(var_dir, durable=False)

    for name in (
        "embedded-credentials.json",
        "embedded.env",
        "embedded.json",
        "nats-auth.conf",
        "valkey-auth.conf",
    ):
        assert _mode(var_dir / name) == 0o600, name
    assert _mode(var_dir / "pgsock") == 0o700
    stored = json.loads((var_dir / "embedded-credentials.json").read_text())
    assert sorted(stored) == ["nats", "postgres", "valkey"] and len(set(stored.values())) == 3
    assert not (var_dir / "postgres-initdb.pw").exists()


def test_a_restart_reuses_the_credentials_so_existing_data_stays_reachable(var_dir):
    urls, _ = embedded.ensure_servers(var_dir, durable=False)
    with psycopg.connect(urls["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v int)")
    embedded.stop_servers(var_dir)

    again, started = embedded.ensure_servers(var_dir, durable=False)

    assert started == ["postgres", "nats", "valkey"]
    assert (
        again["DATABASE_URL"] == urls["DATABASE_URL"]
        and again["REDIS_URL"].split("@")[0] == urls["REDIS_URL"].split("@")[0]
    )
    with psycopg.connect(again["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)


def test_a_var_dir_from_before_credentials_is_migrated_with_its_data(var_dir):
    urls, _ = embedded.ensure_servers(var_dir, durable=False)
    with psycopg.connect(urls["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    embedded.stop_servers(var_dir)
    # What an older release left: a trust cluster, no credentials file.
    (var_dir / "postgres" / "pg_hba.conf").write_text("local all all trust\n")
    (var_dir / "embedded-credentials.json").unlink()

    migrated, _ = embedded.ensure_servers(var_dir, durable=False)

    _assert_closed_without_credentials(migrated)
    with psycopg.connect(migrated["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT v FROM kept").fetchone() == (7,)
    rules = [line.split() for line in (var_dir / "postgres" / "pg_hba.conf").read_text().splitlines()]
    assert {rule[-1] for rule in rules if rule and not rule[0].startswith("#")} == {"scram-sha-256"}
