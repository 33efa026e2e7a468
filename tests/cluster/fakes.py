"""Cluster pieces without Ray: the real sandbox hosts and remote slots, linked by direct calls.

``DirectLink`` stands in for ``HostLink``: it calls a ``SandboxHost`` in this process
(over the UNSAFE subprocess backend) instead of an actor on a node, and can be told
to die, so the loop's retry and the remote slot's decoding are tested in seconds.
``FakeClusterPool`` takes ``ClusterPool``'s place in ``orchestrator.research``.
"""

from __future__ import annotations

import threading
from pathlib import Path

from orchestrator.cluster.host import SandboxHost
from orchestrator.cluster.remote import RemoteSlot
from orchestrator.exceptions import NodeLost, SandboxUnavailable
from orchestrator.sandbox.local import SubprocessBackend


class DirectLink:
    """``HostLink``'s interface over an in-process host; ``die_on`` names a method that loses the node."""

    def __init__(self, host: SandboxHost, node: str, *, die_on: str | None = None) -> None:
        self.host, self.node, self.die_on = host, node, die_on
        self.calls: list[str] = []

    def call(self, method: str, *args, timeout_s: float = 30.0):
        self.calls.append(method)
        if method == self.die_on:
            raise NodeLost(self.node, f"ActorDiedError in {method}: the node's raylet was killed (simulated)")
        return getattr(self.host, method)(*args)


class FakeClusterPool:
    """Two (or more) in-process hosts named like nodes; ``dying`` nodes lose every job at its first recv."""

    node_retries = 1
    instances: list[FakeClusterPool] = []
    nodes_spec: tuple[str, ...] = ("head/aaaaaaaa", "node2/bbbbbbbb")
    dying: frozenset[str] = frozenset()

    def __init__(self, address: str, config, *, data_dir: Path, on_event=None) -> None:
        self.address, self.config, self.data_dir, self.on_event = address, config, Path(data_dir), on_event
        self.hosts: dict[str, SandboxHost] = {}
        self.dispatched = {name: 0 for name in self.nodes_spec}
        self.lost_nodes: list[str] = []
        self.placed: list[str] = []
        self._lock = threading.Lock()
        FakeClusterPool.instances.append(self)

    def __enter__(self) -> FakeClusterPool:
        files = {p.name: p.read_bytes() for p in self.data_dir.iterdir() if p.is_file()}
        for name in self.nodes_spec:
            host = SandboxHost(self.config, slots=1, backend=SubprocessBackend())
            host.stage(files)
            self.hosts[name] = host
            if self.on_event is not None:
                self.on_event("cluster_node_ready", f"node {name} is ready with 1 slot(s)", node=name, slots=1)
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def capacity(self) -> int:
        return len(self.hosts) - len(self.lost_nodes)

    def nodes(self) -> list[dict]:
        return [{"node": n, "state": "lost" if n in self.lost_nodes else "ready", "slots": 1,
                 "jobs": self.dispatched[n], "error": ""} for n in self.hosts]

    @property
    def stats(self) -> dict[str, int]:
        return {"ready": self.capacity(), "starting": 0, "launched": sum(self.dispatched.values())}

    def acquire(self, timeout_s=None, *, avoid=None) -> RemoteSlot:
        with self._lock:
            live = [n for n in self.hosts if n not in self.lost_nodes and n != avoid] or \
                   [n for n in self.hosts if n not in self.lost_nodes]
            if not live:
                raise SandboxUnavailable("no node left")
            name = min(live, key=lambda n: self.dispatched[n])
            self.dispatched[name] += 1
            self.placed.append(name)
        link = DirectLink(self.hosts[name], name, die_on="recv" if name in self.dying else None)
        reply = self.hosts[name].acquire(60.0)
        return RemoteSlot(link, reply, self.config)

    def lost(self, node: str, why: str) -> None:
        with self._lock:
            if node not in self.lost_nodes and node in self.dying and len(self.dying) < len(self.hosts):
                self.lost_nodes.append(node)

    def close(self) -> None:
        for host in self.hosts.values():
            host.shutdown()
