"""docker-compose.cluster.yml is right by construction (no machine here runs Docker; docs/operations.md "Scale").

What can be checked without Docker: the three NATS nodes route to each other under distinct names and
stores, every process gets all three servers and replicas 3, and each engine's shards cover k = 0..N-1
exactly once (two processes with the same k would share one consumer).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from cryptomon.messaging import Shard, server_urls

ROOT = Path(__file__).resolve().parent.parent
BASE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
CLUSTER = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
NODES = ["nats", "nats-2", "nats-3"]
NO_NATS = {"emulator"}  # the Binance stand-in of the demo profile speaks no NATS


def merged(name: str) -> dict:
    """A service as `docker compose -f docker-compose.yml -f docker-compose.cluster.yml` sees it."""
    override = CLUSTER["services"][name]
    base_name = override.get("extends", {}).get("service", name)
    service = {**BASE["services"].get(base_name, {}), **override}
    service["environment"] = {
        **(BASE["services"].get(base_name, {}).get("environment") or {}),
        **(override.get("environment") or {}),
    }
    return service


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_three_nats_nodes_route_to_each_other_with_their_own_names_and_stores():
    names, stores = set(), set()
    for node in NODES:
        command = merged(node)["command"]
        names.add(flag(command, "--name"))
        routes = {
            re.sub(r"^nats://([^:]+):6222$", r"\1", url) for url in flag(command, "--routes").split(",")
        }
        assert routes == set(NODES), f"{node} routes to {routes}"
        assert flag(command, "--cluster_name") == "cryptomon" and "--jetstream" in command
        assert command[0] == merged("nats")["command"][0] == "nats-server"  # as docker-compose.yml runs it
        stores.add(str(merged(node).get("volumes")))
        assert "ports" not in CLUSTER["services"][node], "the route port must not be published"
    assert len(names) == 3 and len(stores) == 3


def test_every_process_gets_all_three_servers_and_three_replicas():
    app_services = [
        name
        for name, service in BASE["services"].items()
        if "NATS_URL" in (service.get("environment") or {}) and name not in NO_NATS
    ]
    app_services += [name for name in CLUSTER["services"] if name.endswith("-1")]
    for name in app_services:
        environment = merged(name)["environment"]
        hosts = [url.split("//")[1].split(":")[0] for url in server_urls(environment["NATS_URL"])]
        assert hosts == NODES, f"{name}: NATS_URL {environment['NATS_URL']}"
        assert environment["NATS_STREAM_REPLICAS"] == "3", name


def test_each_engine_runs_every_shard_exactly_once():
    for kind in ("run_metrics", "run_alerts"):
        shards = [
            Shard.parse(merged(name)["command"].split("--shard ")[1].split()[0])
            for name in CLUSTER["services"]
            if kind in str(merged(name).get("command"))
        ]
        counts = {shard.count for shard in shards}
        assert len(counts) == 1, f"{kind}: shards disagree on N: {shards}"
        assert sorted(shard.index for shard in shards) == list(range(counts.pop())), f"{kind}: {shards}"
