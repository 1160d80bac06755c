"""The ground everything stands on: schema, router, presets, streams, embedded servers, configuration."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from alerts.models import AlertHistory, AlertRule, OutboxEntry, UserSettings
from collector.models import Symbol
from cryptomon import embedded, messaging
from cryptomon.routers import TimeseriesRouter
from metrics.models import MetricBar, StoredCandle
from tests.conftest import run_manage
from tests.contract_docs import derivatives_presets, kline_presets

BOTH = ["default", "timeseries"]


def _tables(alias: str) -> set[str]:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.django_db(databases=BOTH)
def test_migrations_create_each_table_on_its_own_database():
    timeseries, default = _tables("timeseries"), _tables("default")
    for table in ("candles_1m", "metrics_calculated", "alert_history", "notification_outbox", "symbols"):
        assert table in timeseries
        assert table not in default
    for table in ("alert_rules", "user_settings", "auth_user"):
        assert table in default
        assert table not in timeseries


def test_the_router_sends_each_model_to_its_alias():
    router = TimeseriesRouter()
    for model in (StoredCandle, MetricBar, AlertHistory, OutboxEntry, Symbol):
        assert router.db_for_write(model) == "timeseries"
        assert router.db_for_read(model) == "timeseries"
    for model in (AlertRule, UserSettings):
        assert router.db_for_write(model) == "default"


@pytest.mark.django_db(databases=BOTH)
def test_the_composite_keys_refuse_a_second_candle_for_the_same_minute():
    from django.db import IntegrityError, transaction

    now = datetime(2026, 1, 1, tzinfo=UTC)
    fields = dict(
        open=1,
        high=2,
        low=1,
        close=2,
        volume=1,
        quote_volume=2,
        trades=1,
        taker_buy_volume=0,
        taker_buy_quote_volume=0,
        source="ws",
        event_time=now,
    )
    StoredCandle.objects.create(symbol="BTCUSDT", time=now, **fields)
    with pytest.raises(IntegrityError), transaction.atomic(using="timeseries"):
        StoredCandle.objects.create(symbol="BTCUSDT", time=now, **fields)
    StoredCandle.objects.create(symbol="我踏马来了USDT", time=now, **fields)
    assert StoredCandle.objects.filter(symbol="我踏马来了USDT").count() == 1


@pytest.mark.django_db
def test_the_sixteen_presets_exist_exactly_as_designed():
    from importlib import import_module

    kline = import_module("alerts.migrations.0002_presets").PRESETS
    futures = import_module("alerts.migrations.0010_derivatives_presets").PRESETS
    rules = {rule.slug: rule for rule in AlertRule.objects.filter(owner=None)}
    assert len(rules) == 16
    assert kline_presets() == [(s, n, d, e) for s, n, d, e, *_ in kline] and len(kline) == 10
    assert derivatives_presets() == [(s, n, d, e) for s, n, d, e, *_ in futures] and len(futures) == 6
    for slug, name, description, expression in kline_presets():
        rule = rules[slug]
        assert (rule.name, rule.description, rule.expression) == (name, description, expression)
        assert rule.severity == ("warning" if name.startswith("60 Big") else "info")
        assert rule.direction == ("bull" if "Bull" in name or name == "Bottom Hunter" else "bear")
        assert (rule.mode, rule.cooldown_seconds, rule.enabled) == ("bar_close", 300, True)
    directions = {"Crowded Longs": "bull", "Short Squeeze": "bull", "Crowded Shorts": "bear"}
    directions |= {"Long Squeeze": "bear", "OI Surge": "neutral", "Basis Dislocation": "neutral"}
    for slug, name, description, expression in derivatives_presets():
        rule = rules[slug]
        assert (rule.name, rule.description, rule.expression) == (name, description, expression)
        assert rule.severity == ("warning" if name.endswith("Squeeze") else "info")
        assert rule.direction == directions[name]
        assert (rule.mode, rule.cooldown_seconds, rule.enabled, rule.owner) == ("bar_close", 300, True, None)


async def test_stream_creation_is_idempotent_and_corrects_drift(jetstream):
    _nc, js = jetstream
    assert await messaging.ensure_streams(js) == []
    drifted = StreamConfig(
        name="CANDLES",
        subjects=["candles.1m.>"],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_bytes=1024 * 1024,
        max_age=60,
        duplicate_window=5,
    )
    await js.update_stream(drifted)
    assert await messaging.ensure_streams(js) == ["corrected CANDLES"]
    info = await js.stream_info("CANDLES")
    assert info.config.max_age == 3600
    assert info.config.duplicate_window == 600
    assert info.config.discard == DiscardPolicy.OLD
    assert info.config.storage == StorageType.FILE
    assert await messaging.ensure_streams(js) == []


async def test_a_repeated_msg_id_is_stored_once_within_the_duplicate_window(jetstream):
    _nc, js = jetstream
    for _ in range(2):
        await js.publish("candles.1m.BTCUSDT", b"{}", headers={"Nats-Msg-Id": "BTCUSDT:60000"})
    assert (await js.stream_info("CANDLES")).state.messages == 1


async def test_a_restarted_worker_gets_its_unacknowledged_messages_first_and_in_order(jetstream):
    nc, js = jetstream
    for minute in range(10):
        await js.publish("metrics.calculated.BTCUSDT", messaging.encode({"open_time": minute}))
    subjects = ["metrics.calculated.>"]
    await messaging.resume_consumer(js, "METRICS", "test-p0of1", subjects, ack_wait=60)
    crashed = await js.pull_subscribe_bind("test-p0of1", "METRICS")
    first = await crashed.fetch(5, timeout=5)
    for message in first[:2]:
        await message.ack()
    await nc.flush()  # the worker dies here: minutes 2-4 delivered, never acknowledged
    assert await messaging.resume_consumer(js, "METRICS", "test-p0of1", subjects, ack_wait=60) == 3
    restarted = await js.pull_subscribe_bind("test-p0of1", "METRICS")
    again = await restarted.fetch(8, timeout=5)
    assert [messaging.decode(m.data)["open_time"] for m in again] == list(range(2, 10))
    # the universe changes later: the consumer is updated in place, still resuming where it was
    await messaging.ensure_consumer(js, "METRICS", "test-p0of1", ["metrics.calculated.BTCUSDT"], ack_wait=60)
    info = await js.consumer_info("METRICS", "test-p0of1")
    assert (info.config.filter_subject, info.config.opt_start_seq) == ("metrics.calculated.BTCUSDT", 3)


def test_shards_split_symbols_by_crc32():
    symbols = [f"SYM{i}USDT" for i in range(200)] + ["我踏马来了USDT"]
    shards = [messaging.Shard(k, 3) for k in range(3)]
    for symbol in symbols:
        assert sum(shard.owns(symbol) for shard in shards) == 1
    assert shards[1].consumer_name("metrics") == "metrics-p1of3"
    assert messaging.Shard().filter_subjects("candles.1m", symbols) == ["candles.1m.>"]
    with pytest.raises(ValueError, match="k/N"):
        messaging.Shard.parse("2")


@pytest.mark.django_db(databases=BOTH)
def test_check_infra_names_nats_when_it_is_down(settings):
    settings.NATS_URL = f"nats://127.0.0.1:{embedded.free_port()}"
    out = io.StringIO()
    with pytest.raises(CommandError, match="NATS"):
        call_command("check_infra", stdout=out)
    lines = out.getvalue().splitlines()
    assert any(line.startswith("✗ NATS") for line in lines)
    assert any(line.startswith("✓ Redis") for line in lines)
    assert any(line.startswith("✓ metadata database: 16 alert rules") for line in lines)


def _without_server_urls() -> dict:
    env = {
        k: v for k, v in os.environ.items() if k not in (*embedded.SERVER_URL_VARS, "TIMESERIES_DATABASE_URL")
    }
    env.pop("CRYPTOMON_EMBEDDED", None)
    return env


def test_two_commands_share_the_embedded_servers_and_check_infra_passes(tmp_path, monkeypatch):
    var_dir = tmp_path / "var"
    env = {"CRYPTOMON_VAR_DIR": str(var_dir)}
    clean = _without_server_urls()
    monkeypatch.setattr(os, "environ", clean)
    try:
        migrate = run_manage("migrate", "--noinput", env=env)
        assert migrate.returncode == 0, migrate.stderr
        first = (var_dir / "embedded.env").read_text()
        state = (var_dir / "embedded.json").read_text()
        check = run_manage("check_infra", env=env)
        assert check.returncode == 0, check.stdout + check.stderr
        assert (var_dir / "embedded.env").read_text() == first
        assert (var_dir / "embedded.json").read_text() == state
        assert "✓ metadata database: 16 alert rules" in check.stdout
        assert "✓ publish/subscribe" in check.stdout
        assert "✗" not in check.stdout
        assert "host=" in first and "127.0.0.1:4222" not in first and "127.0.0.1:6379" not in first
        passwords = json.loads((var_dir / "embedded-credentials.json").read_text()).values()
        shown = migrate.stdout + migrate.stderr + check.stdout + check.stderr
        assert not [password for password in passwords if password in shown]  # secrets are never printed
    finally:
        embedded.stop_servers(var_dir)
    assert not (Path(var_dir) / "pgsock" / ".s.PGSQL.5432").exists()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DATABASE_URL", "mysql://localhost/db", "DATABASE_URL must be a postgresql:// URL"),
        ("NATS_URL", "localhost:4222", "NATS_URL must be a nats:// or tls:// URL"),
        ("REDIS_URL", "redis://:hunter2-secret@/0", "REDIS_URL must be a redis:// or rediss:// URL"),
        ("BINANCE_STREAMS_PER_CONNECTION", "many", "BINANCE_STREAMS_PER_CONNECTION must be an integer"),
        ("SECRET_KEY", "", "SECRET_KEY is not set"),
    ],
)
def test_configuration_errors_name_the_variable_in_one_line(variable, value, message):
    env = {
        "DATABASE_URL": "postgresql://u@localhost/db",
        "SECRET_KEY": "x",
        "CRYPTOMON_EMBEDDED": "",
        variable: value,
    }
    result = run_manage("check", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("configuration error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr  # a password in a malformed URL is masked


@pytest.mark.django_db(databases=BOTH)
def test_retention_deletes_expired_candles_and_keeps_the_warm_up():
    from cryptomon.retention import delete_expired

    now = datetime(2026, 3, 1, tzinfo=UTC)
    fields = dict(
        open=1,
        high=1,
        low=1,
        close=1,
        volume=0,
        quote_volume=0,
        trades=0,
        taker_buy_volume=0,
        taker_buy_quote_volume=0,
        source="filled",
        event_time=now,
    )
    for minutes_ago in (60 * 51, 2880, 10):
        StoredCandle.objects.create(symbol="ETHUSDT", time=now - timedelta(minutes=minutes_ago), **fields)
    deleted = delete_expired(now=now, batch_size=1)
    assert deleted["candles_1m"] == 1
    kept = sorted(int((now - c.time).total_seconds() // 60) for c in StoredCandle.objects.all())
    assert kept == [10, 2880]


def test_healthz_answers_without_touching_any_server(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db(databases=BOTH)
def test_readyz_reports_every_dependency_to_staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("ops", is_staff=True))
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert {"time-series database", "metadata database", "NATS", "Redis"} <= set(response.json()["checks"])
