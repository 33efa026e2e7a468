"""A real local Ray cluster for the cluster tests: a head and a second node, both on this machine.

Each node is started with ``ray start`` as a team would on two boxes (the second with
``--address``), each with its own resources and one CPU, both using the local Docker
engine. Every Ray process of the cluster lives under its own ``--temp-dir``, so the
teardown stops exactly these processes (never a developer's own cluster). Without Ray
the tests skip on a developer's machine and fail under CI.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.ci import unavailable

RAY = Path(sys.executable).with_name("ray")
#: Set in the environment of every process of the test cluster (Ray renames its processes).
MARK = "RESEARCHER_TEST_RAY_CLUSTER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    """Ports, temp dir and node ids of the test cluster."""

    temp_dir: Path
    gcs_port: int
    client_port: int
    nodes: dict[str, str] = field(default_factory=dict)  # our resource name -> Ray node id
    raylets: set[int] = field(default_factory=set)  # their agents carry RAY_RAYLET_PID, not our environment
    _worker_ports: int = 30000

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _ports(self) -> list[str]:
        low = self._worker_ports
        self._worker_ports += 1000
        return [f"--min-worker-port={low}", f"--max-worker-port={low + 999}"]

    def start_node(self, resource: str, *, head: bool = False) -> str:
        """``ray start`` one node with one CPU and the custom resource ``resource``; its node id."""
        args = [str(RAY), "start", "--num-cpus=1", f"--resources={{\"{resource}\": 1}}", "--disable-usage-stats",
                *self._ports()]
        if head:
            args += ["--head", f"--port={self.gcs_port}", f"--ray-client-server-port={self.client_port}",
                     "--include-dashboard=false", f"--temp-dir={self.temp_dir}", "--node-ip-address=127.0.0.1"]
        else:
            args += [f"--address={self.gcs_address}", "--node-ip-address=127.0.0.1"]
        env = {**os.environ, "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
               MARK: str(self.temp_dir)}  # every process of the node inherits it: teardown finds them all
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed ({done.returncode}): {done.stdout[-1500:]}\n{done.stderr[-1500:]}")
        node_id = self._node_with(resource)
        self.nodes[resource] = node_id
        pid = self.raylet_pid(node_id)
        if pid is not None:
            self.raylets.add(pid)
        return node_id

    def _node_with(self, resource: str, timeout_s: float = 60.0) -> str:
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
                "print(json.dumps([[n['NodeID'], n['Alive'], n['Resources']] for n in ray.nodes()]))")
        until = time.monotonic() + timeout_s
        while time.monotonic() < until:
            out = subprocess.run([sys.executable, "-c", code % self.gcs_address], capture_output=True, text=True,
                                 timeout=120)
            import json

            for line in reversed(out.stdout.strip().splitlines()):
                if line.startswith("["):
                    for node_id, alive, resources in json.loads(line):
                        if alive and resource in resources:
                            return node_id
                    break
            time.sleep(1)
        raise RuntimeError(f"no alive node with resource {resource} appeared")

    def raylet_pid(self, node_id: str) -> int | None:
        """The raylet process of the node ``node_id`` (or of the node whose id starts so)."""
        for pid in _pids():
            cmd = _cmdline(pid)
            if "raylet" in cmd.split(" ", 1)[0] and f"--node_id={node_id}" in cmd:
                return pid
        return None

    def kill_node(self, node_id: str) -> int:
        """SIGKILL the node's raylet and its workers at once, as a dead box would; the raylet's pid.

        The raylet alone is not enough: an actor's worker outlives it for seconds and still
        delivers the result it was computing straight to its caller (a CI run lost no candidate
        that way when the one on the node had 4 s to go).
        """
        pid = self.raylet_pid(node_id)
        assert pid is not None, f"no raylet for node {node_id}"
        mark = f"RAY_RAYLET_PID={pid}\0".encode()
        workers = [p for p in _pids() if p not in (pid, os.getpid()) and mark in _environ(p)]
        for victim in (pid, *workers):
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pid

    def stop(self) -> None:
        """Kill every process of this cluster (and only those), then its temp dir."""
        marks = [f"{MARK}={self.temp_dir}".encode()] + [f"RAY_RAYLET_PID={pid}\0".encode() for pid in self.raylets]
        for _ in range(3):
            pids = [p for p in _pids() if p != os.getpid()
                    and (any(m in _environ(p) for m in marks) or _uses(p, self.temp_dir))]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not pids:
                break
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _uses(pid: int, directory: Path) -> bool:
    """True when ``pid`` has a file open under ``directory`` (Ray's agents: their logs are there)."""
    prefix = str(directory) + "/"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            continue
    return False


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


@pytest.fixture(scope="session")
def ray_cluster(docker_client):
    """A head (resource ``researcher_head``) and a second node (``researcher_node2``), 1 CPU each."""
    try:
        import ray  # noqa: F401
    except ImportError:
        unavailable("Ray is not installed: pip install -e '.[test]' (it brings the [ray] extra)")
    if not RAY.exists():
        unavailable(f"no `ray` command beside {sys.executable}")
    cluster = LocalCluster(temp_dir=Path(tempfile.mkdtemp(prefix="ray-rt-", dir="/tmp")),
                           gcs_port=free_port(), client_port=free_port())
    try:
        cluster.start_node("researcher_head", head=True)
        cluster.start_node("researcher_node2")
        yield cluster
    finally:
        cluster.stop()
