"""Prometheus metrics (docs/operations.md "Observe"): every process of `run_monitor --demo` answers `/metrics`,
and the names the Grafana dashboard, the alert rules and the docs use are the names the processes export."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cryptomon import exporter
from cryptomon.embedded import free_port
from cryptomon.management.commands.run_monitor import METRICS_PORT_OFFSETS, metrics_port
from cryptomon.workers import Stats
from notifications import grouping, services
from notifications.base import PermanentError
from tests.e2e_system import MANAGE, ROOT, System, wait_until

DASHBOARD = ROOT / "deploy" / "grafana" / "cryptomon.json"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
NAME = re.compile(r"\bcryptomon_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ()}


def dashboard_names() -> set[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {
        name
        for panel in panels
        for target in panel.get("targets", [])
        for name in NAME.findall(target["expr"])
    }


def alert_rule_names() -> set[str]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return {name for group in groups for rule in group["rules"] for name in NAME.findall(str(rule["expr"]))}


def documented_names() -> set[str]:
    """The metric names of the tables in docs/operations.md's "Observe" section."""
    text = OPERATIONS.read_text()
    section = text[text.index("## Observe") :]
    end = section.find("\n## ", 4)
    section = section if end < 0 else section[:end]
    return {match.group(1) for match in re.finditer(r"^\| `(cryptomon_[a-z0-9_]+)`", section, re.MULTILINE)}


def scraped_names(text: str) -> set[str]:
    """Family names and the series names a query may use (`_total`, `_bucket`…), samples or not yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def sample_value(text: str, name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def test_every_documented_metric_is_exported_and_every_exported_one_documented():
    documented = documented_names()
    assert documented, "docs/operations.md lists no metric"
    assert documented == exporter.exported_names()


def test_the_dashboard_and_the_alert_rules_use_only_documented_metrics():
    documented = {
        name + suffix for name in exporter.exported_names() for suffix in ("", "_bucket", "_sum", "_count")
    }
    assert dashboard_names() and alert_rule_names()
    assert dashboard_names() - documented == set()
    assert alert_rule_names() - documented == set()


def test_a_workers_stats_scrape_with_cumulative_latency_buckets_and_errors_by_reason():
    stats = Stats()
    stats.inc("metrics_candles_received_total", 5)
    stats.inc("metrics_bad_messages_total", 2)
    stats.set("metrics_consumer_pending", 42, consumer="metrics")
    for seconds in (0.0005, 0.02, 0.02, 30.0):
        stats.observe("metrics_batch_seconds", seconds)
    families = {
        family.name: family
        for family in text_string_to_metric_families(
            generate_latest(exporter.registry_for(stats, "metrics")).decode()
        )
    }
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("cryptomon_metrics_candles_received_total", ())] == 5
    assert samples[("cryptomon_metrics_bars_published_total", ())] == 0  # counted or not, it is there
    assert samples[("cryptomon_metrics_consumer_pending", (("consumer", "metrics"),))] == 42
    assert samples[("cryptomon_metrics_errors_total", (("reason", "bad_message"),))] == 2
    bucket = "cryptomon_metrics_batch_seconds_bucket"
    assert samples[(bucket, (("le", "0.001"),))] == 1
    assert samples[(bucket, (("le", "0.025"),))] == 3
    assert samples[(bucket, (("le", "+Inf"),))] == 4
    assert samples[("cryptomon_metrics_batch_seconds_count", ())] == 4
    assert "cryptomon_alerts_bars_total" not in families  # another stage's names stay out


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


@pytest.fixture
def monitor(tmp_path):
    """`run_monitor --demo` on servers of its own, every process with a free /metrics port."""
    system = System(tmp_path / "monitor", symbols=[], speed=10)
    ports = {name: free_port() for name in METRICS_PORT_OFFSETS}
    web_port = free_port()
    process = None
    try:
        system.start_servers()
        env = {**system.env, **{f"{name.upper()}_METRICS_PORT": str(port) for name, port in ports.items()}}
        argv = [*MANAGE, "run_monitor", "--demo", "--speed", "10", "--symbols", "4", "--port", str(web_port)]
        log = (system.var_dir / "logs" / "run_monitor.log").open("w")
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        yield ports, web_port
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        system.stop()


def test_every_process_of_run_monitor_answers_metrics_with_every_name_the_dashboard_and_alerts_use(monitor):
    ports, web_port = monitor
    scrapes: dict[str, str] = {}

    missing: list[str] = []

    def flowing() -> bool:
        urllib.request.urlopen(f"http://127.0.0.1:{web_port}/healthz", timeout=5).close()
        for name, port in ports.items():
            if (text := scrape(port)) is not None:
                scrapes[name] = text
        # Every process answers, and the pipeline is visibly moving through the counters.
        expected = {
            "collector": "cryptomon_collector_candles_published_total",
            "metrics": "cryptomon_metrics_bars_published_total",
            "alerts": "cryptomon_alerts_bars_total",
            "web": "cryptomon_web_requests_total",
            "celery": "cryptomon_notifications_outbox_age_seconds",
            "gateway": "cryptomon_gateway_live_total",
        }
        missing[:] = [
            f"{process} {name}"
            for process, name in expected.items()
            if process not in scrapes
            or (not sample_value(scrapes[process], name) > 0 and process != "celery")
        ]
        if "alerts" in scrapes and "cryptomon_alerts_consumer_pending" not in samples_of(scrapes["alerts"]):
            missing.append("alerts consumer lag")
        return not missing

    try:
        wait_until(
            lambda: _quietly(flowing), "every process's /metrics to show the pipeline flowing", 240, 1.0
        )
    except AssertionError as error:
        raise AssertionError(f"{error}; still missing: {missing}") from None
    exported = set().union(*(scraped_names(text) for text in scrapes.values()))
    assert dashboard_names() - exported == set()
    assert alert_rule_names() - exported == set()
    # Each process exports its own stage, not another's.
    assert "cryptomon_collector_frames_total" in scraped_names(scrapes["collector"])
    assert "cryptomon_collector_frames_total" not in scraped_names(scrapes["metrics"])
    assert "cryptomon_notifications_outbox_age_seconds" in scraped_names(scrapes["celery"])


def samples_of(text: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def _quietly(check) -> bool:
    try:
        return check()
    except OSError:  # the web server not listening yet
        return False


def test_run_monitor_gives_each_process_its_own_metrics_port_unless_one_is_set(settings):
    settings.MONITOR_METRICS_PORT = 9310
    settings.COLLECTOR_METRICS_PORT = 0
    ports = [metrics_port(name) for name in METRICS_PORT_OFFSETS]
    assert ports[0] == 9310 and len(set(ports)) == len(ports)
    assert metrics_port("emulator") == 0  # not one of ours to watch
    settings.COLLECTOR_METRICS_PORT = 12345
    assert metrics_port("collector") == 12345
    settings.MONITOR_METRICS_PORT = 0
    assert metrics_port("alerts") == 0


def test_a_refused_notification_is_counted_by_channel_kind_and_outcome(settings):
    settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = False

    def count(outcome: str) -> float:
        labels = {"kind": "webhook", "outcome": outcome}
        return REGISTRY.get_sample_value("cryptomon_notifications_deliveries_total", labels) or 0

    before = count("permanent"), count("sent")
    config = {"url": "http://127.0.0.1:9/hook", "secret": "s" * 28}
    with pytest.raises(PermanentError):
        services.deliver("webhook", config, grouping.test_message("metrics"))
    assert (count("permanent"), count("sent")) == (before[0] + 1, before[1])
