"""Slots across a Ray cluster: one sandbox host per node, jobs sent to whichever has a free slot.

``ClusterPool`` has the warm pool's interface (``acquire``, ``close``, ``stats``), so
the research loop runs unchanged: ``acquire()`` returns a ``RemoteSlot`` that
``execute`` drives like a local one. What it adds:

- **placement**: one ``SandboxHost`` actor per alive node, pinned there with a hard
  node-affinity strategy and declaring the CPUs (or GPUs) its slots use as Ray
  resources, so Ray's accounting sees them taken. A node's slots: its GPUs for
  ``--device cuda``, else its CPUs over ``--cpus``;
- **data once per node**: the run's sandbox files (train/val with labels, the
  evaluation inputs; never selection or test labels) go into Ray's object store once
  and each host writes them to its own read-only data directory;
- **joins and losses**: the node list is re-read every few seconds, so a node that
  joins mid-run gets a host; a host whose calls fail is dropped and its job raises
  ``NodeLost`` (the loop retries it once elsewhere);
- **teardown**: ``close()`` (Ctrl-C and SIGTERM included) has every host kill and
  remove its sandboxes, then ends the actors and disconnects.

Ray is an optional extra (``pip install -e '.[ray]'``); nothing on the
single-machine path imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.cluster.remote import CALL_MARGIN_S, HostLink, RemoteSlot, ray_errors
from orchestrator.exceptions import NodeLost, SandboxUnavailable, UsageError
from orchestrator.sandbox.config import SandboxConfig

log = logging.getLogger("researcher.cluster")

#: Seconds between re-reads of the cluster's node list (joins and deaths).
REFRESH_S = 2.0
#: How long a host may take to start and stage the data before its node is passed over.
HOST_START_S = 300.0
#: The candidate is tried this many more times on another node when its node dies.
NODE_RETRIES = 1
#: Ray namespace of the run's actors.
NAMESPACE = "pytorch-researcher"
#: Ray Client sessions the server refused (``Initialization failure``, seen now and then when a
#: session starts right after another ended) are tried again, this many times in all.
CONNECT_TRIES, CONNECT_BACKOFF_S = 3, 2.0


def import_ray():
    """The ``ray`` module, or UsageError saying how to install the extra."""
    try:
        import ray
    except ImportError as exc:
        raise UsageError("--cluster needs Ray, an optional extra: pip install -e '.[ray]' (on the orchestrator "
                         "and on every node, with the same versions)") from exc
    return ray


@contextlib.contextmanager
def _own_sigterm():
    """Keep this process's SIGTERM handler: ``ray.init`` installs ``sys.exit`` in its place, which
    would skip the run's interrupt path (sandboxes killed on every node, the run marked interrupted).
    A SIGTERM that lands while Ray's handler is in place is an interrupt too, not a ``SystemExit``
    (which marked the run failed, "stopped by an error")."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    except SystemExit as exc:
        if main and exc.code == signal.SIGTERM:  # Ray's handler: sys.exit(signum)
            raise KeyboardInterrupt from exc
        raise
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def connect(address: str) -> None:
    """Connect this process to the Ray cluster at ``address`` (``ray://HOST:PORT``, ``HOST:PORT``, ``auto``)."""
    ray = import_ray()
    if ray.is_initialized():
        return
    error: Exception | None = None
    for attempt in range(1, CONNECT_TRIES + 1):
        try:
            with _own_sigterm():
                ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
            return
        except ConnectionAbortedError as exc:  # Ray Client's server failed to set the session up: again
            error = exc
            log.warning("Ray Client session %d of %d refused by %s: %s", attempt, CONNECT_TRIES, address, exc)
            if ray.is_initialized():
                ray.shutdown()
            time.sleep(CONNECT_BACKOFF_S * attempt)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, gRPC errors...
            error = exc
            break
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = (lines[0][:200] + (f" ... {lines[-1][:200]}" if len(lines) > 1 else "")) if lines else ""
    raise SandboxUnavailable(
        f"cannot reach the Ray cluster at {address!r} ({type(error).__name__}: {detail}). "
        "Start its head with `ray start --head`, join nodes with `ray start --address HEAD:6379`, and give "
        "--cluster ray://HEAD:10001 (the head's client port) or HEAD:6379 from a node of the cluster; "
        "docs/deployment.md, 'Several GPU boxes: Ray'") from error


def node_name(node: dict) -> str:
    """A node as the registry and the report name it: host (or address) and the start of its Ray id."""
    host = node.get("NodeManagerHostname") or node.get("NodeManagerAddress") or "?"
    return f"{host}/{str(node.get('NodeID', ''))[:8]}"


def node_slots(resources: dict, config: SandboxConfig) -> int:
    """Sandboxes a node runs at once: one per GPU for cuda, else its CPUs over the sandbox's CPU cap."""
    if config.device == "cuda":
        return int(resources.get("GPU", 0))
    return int(float(resources.get("CPU", 0)) // max(config.cpus, 1e-9))


@dataclass
class Host:
    """The orchestrator's book on one node's sandbox host."""

    node_id: str
    name: str
    link: HostLink
    slots: int
    ready_ref: object  # the stage() call; the host takes jobs once it returned
    created: float = field(default_factory=time.monotonic)
    state: str = "starting"  # starting | ready | lost | broken
    in_use: int = 0
    dispatched: int = 0
    error: str = ""


class ClusterPool:
    """Hands out Ready slots on the cluster's nodes; one job per slot, like ``WarmPool``."""

    node_retries = NODE_RETRIES

    def __init__(self, address: str, config: SandboxConfig, *, data_dir: Path,
                 on_event: Callable[..., None] | None = None) -> None:
        self.address, self.config, self.data_dir = address, config, Path(data_dir)
        self.on_event = on_event
        self._hosts: dict[str, Host] = {}
        self._passed: set[str] = set()  # nodes that cannot run a sandbox (no GPU, too few CPUs)
        self._lock = threading.Condition()
        self._closed = False
        self._refreshed = 0.0
        self._data_ref = None
        self._actor_class = None

    def __enter__(self) -> ClusterPool:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Connect, put the run's data in the object store once, and start a host on every node."""
        ray = import_ray()
        connect(self.address)
        from orchestrator.cluster.host import SandboxHost

        self._actor_class = ray.remote(SandboxHost)
        files = {p.name: p.read_bytes() for p in sorted(self.data_dir.iterdir()) if p.is_file()}
        self._data_ref = ray.put(files)
        with self._lock:
            self._refresh(force=True)

    def wait_ready(self, slots: int, timeout_s: float = HOST_START_S) -> int:
        """Wait until the ready hosts have ``slots`` slots in all (or ``timeout_s``); the ready slots."""
        until = time.monotonic() + timeout_s
        with self._lock:
            while True:
                self._refresh()
                ready = sum(h.slots for h in self._hosts.values() if h.state == "ready")
                starting = any(h.state == "starting" for h in self._hosts.values())
                if ready >= slots or not starting and self._hosts or time.monotonic() >= until:
                    return ready
                self._lock.wait(0.25)

    def capacity(self) -> int:
        """Slots of the hosts started so far (ready or starting)."""
        with self._lock:
            return sum(h.slots for h in self._hosts.values() if h.state in ("starting", "ready"))

    def nodes(self) -> list[dict]:
        """Each host's node, state, slots and jobs so far (for the registry and `doctor`)."""
        with self._lock:
            return [{"node": h.name, "state": h.state, "slots": h.slots, "jobs": h.dispatched, "error": h.error}
                    for h in self._hosts.values()]

    def _event(self, kind: str, message: str, **payload) -> None:
        log.info("%s", message)
        if self.on_event is not None:
            try:
                self.on_event(kind, message, **payload)
            except Exception:  # noqa: BLE001 - a registry write must not end placement
                log.exception("could not record %s", kind)

    def _refresh(self, *, force: bool = False) -> None:
        """Re-read the node list (under the lock): hosts for new nodes, lost ones marked, staged ones ready."""
        import ray

        now = time.monotonic()
        if not force and now - self._refreshed < REFRESH_S:
            return
        self._refreshed = now
        try:
            nodes = ray.nodes()
        except Exception as exc:  # noqa: BLE001 - the head is unreachable: keep what we know
            log.warning("cannot list the cluster's nodes: %s", exc)
            nodes = []
        alive = {n["NodeID"]: n for n in nodes if n.get("Alive")}
        for host in self._hosts.values():
            if host.state in ("starting", "ready") and nodes and host.node_id not in alive:
                self._lose(host, "the node left the cluster")
        for node_id, node in alive.items():
            if node_id not in self._hosts and node_id not in self._passed:
                self._start_host(node_id, node)
        self._check_starting(now)

    def _start_host(self, node_id: str, node: dict) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        resources = node.get("Resources") or {}
        slots = node_slots(resources, self.config)
        name = node_name(node)
        if slots < 1:
            self._passed.add(node_id)
            need = "a GPU" if self.config.device == "cuda" else f"{self.config.cpus:g} CPU(s)"
            self._event("cluster_node_skipped", f"node {name} cannot run a sandbox (it needs {need})", node=name)
            return
        cuda = self.config.device == "cuda"
        cpus = min(float(resources.get("CPU", 0)), slots * self.config.cpus)
        actor = self._actor_class.options(
            num_cpus=cpus, num_gpus=slots if cuda else 0, max_concurrency=8 * slots + 8, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(self.config, slots=slots, gpus=None if cuda else ())
        host = Host(node_id=node_id, name=name, link=HostLink(actor, name), slots=slots,
                    ready_ref=actor.stage.remote(self._data_ref))
        self._hosts[node_id] = host
        self._event("cluster_node_joined", f"node {name}: a sandbox host with {slots} slot(s) is starting",
                    node=name, slots=slots)

    def _check_starting(self, now: float) -> None:
        import ray

        starting = [h for h in self._hosts.values() if h.state == "starting"]
        if not starting:
            return
        done, _ = ray.wait([h.ready_ref for h in starting], num_returns=len(starting), timeout=0)
        done = set(done)
        for host in starting:
            if host.ready_ref in done:
                try:
                    ray.get(host.ready_ref, timeout=CALL_MARGIN_S)  # done: returns at once, or raises stage()'s error
                except ray_errors() as exc:  # the actor or its node died while starting
                    self._lose(host, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                    continue
                except Exception as exc:  # noqa: BLE001 - e.g. no Docker engine on that node
                    cause = getattr(exc, "cause", None) or exc  # a RayTaskError wraps the host's own error
                    self._break(host, str(cause).splitlines()[0][:400] or type(cause).__name__)
                    continue
                host.state = "ready"
                self._event("cluster_node_ready", f"node {host.name} is ready with {host.slots} slot(s)",
                            node=host.name, slots=host.slots)
                self._lock.notify_all()
            elif now - host.created > HOST_START_S:
                self._break(host, f"its sandbox host did not start within {HOST_START_S:g} s "
                                  "(are its CPUs/GPUs taken by other Ray work?)")

    def _lose(self, host: Host, why: str) -> None:
        if host.state == "lost":
            return
        host.state, host.error = "lost", why
        self._event("cluster_node_lost", f"node {host.name} was lost: {why}", node=host.name)
        self._lock.notify_all()

    def _break(self, host: Host, why: str) -> None:
        host.state, host.error = "broken", why
        self._event("cluster_node_broken", f"node {host.name} cannot run sandboxes: {why}", node=host.name)
        self._kill_actor(host)
        self._lock.notify_all()

    @staticmethod
    def _kill_actor(host: Host) -> None:
        import ray

        try:
            ray.kill(host.link.actor)
        except Exception:  # noqa: BLE001 - already gone
            pass

    # ------------------------------------------------------------------ slots

    def acquire(self, timeout_s: float | None = None, *, avoid: str | None = None) -> RemoteSlot:
        """A Ready slot on the node with the most free slots (fewest jobs so far on a tie).

        ``avoid`` names a node not to use while another can take the job (a retry after a
        loss). SandboxUnavailable when no node can run a sandbox.
        """
        until = None if timeout_s is None else time.monotonic() + timeout_s
        waited_since = time.monotonic()
        while True:
            with self._lock:
                while True:
                    if self._closed:
                        raise SandboxUnavailable("the cluster pool is closed")
                    self._refresh()
                    host = self._pick(avoid)
                    if host is not None:
                        host.in_use += 1
                        host.dispatched += 1
                        break
                    self._check_usable(waited_since)
                    if until is not None and time.monotonic() >= until:
                        raise SandboxUnavailable(f"no cluster slot became free within {timeout_s:g} s")
                    self._lock.wait(0.25)
            try:
                reply = host.link.call("acquire", self.config.startup_timeout_s,
                                       timeout_s=self.config.startup_timeout_s + CALL_MARGIN_S)
            except NodeLost as exc:
                with self._lock:
                    host.in_use -= 1
                    self._lose(host, exc.detail)
                continue
            if "error" in reply:
                with self._lock:
                    host.in_use -= 1
                    self._break(host, str(reply["error"]))
                continue
            return RemoteSlot(host.link, reply, self.config, on_close=lambda slot, h=host: self._released(h))

    def _pick(self, avoid: str | None) -> Host | None:
        free = [h for h in self._hosts.values() if h.state == "ready" and h.in_use < h.slots]
        if avoid is not None and any(h.name != avoid for h in free):
            free = [h for h in free if h.name != avoid]
        if not free:
            return None
        return max(free, key=lambda h: (h.slots - h.in_use, -h.dispatched))

    def _check_usable(self, since: float) -> None:
        """SandboxUnavailable when no node is left that could run a sandbox."""
        live = [h for h in self._hosts.values() if h.state in ("starting", "ready")]
        if live:
            return
        if time.monotonic() - since < HOST_START_S and not self._hosts and not self._passed:
            return  # an empty cluster may get a node: wait a while
        problems = "; ".join(f"{h.name}: {h.state} ({h.error[:300]})" for h in self._hosts.values())
        skipped = f"; {len(self._passed)} node(s) without the CPUs/GPUs a sandbox needs" if self._passed else ""
        raise SandboxUnavailable(f"no node of the Ray cluster at {self.address} can run a sandbox: "
                                 f"{problems or 'no nodes'}{skipped}. Each node needs Docker and the sandbox "
                                 "image (`researcher image build` there) and this package with the [ray] extra")

    def _released(self, host: Host) -> None:
        with self._lock:
            host.in_use = max(0, host.in_use - 1)
            self._lock.notify_all()

    def lost(self, node: str, why: str) -> None:
        """The loop saw ``node`` fail under a job: stop sending it work."""
        with self._lock:
            for host in self._hosts.values():
                if host.name == node:
                    self._lose(host, why)

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Have every host kill and remove its sandboxes and data, end the actors, disconnect."""
        import ray

        with self._lock:
            if self._closed:
                return
            self._closed = True
            hosts = list(self._hosts.values())
            self._lock.notify_all()
        if not ray.is_initialized():
            return
        refs = [(h, h.link.actor.shutdown.remote()) for h in hosts if h.state in ("starting", "ready")]
        for host, ref in refs:
            try:
                ray.get(ref, timeout=60)
            except Exception as exc:  # noqa: BLE001 - a lost node's sandboxes go with it (or its next host reaps them)
                log.warning("node %s did not shut down cleanly: %s", host.name, exc)
        for host in hosts:
            self._kill_actor(host)
        ray.shutdown()

    @property
    def stats(self) -> dict[str, int]:
        """Counts for the live view: free slots on ready hosts, hosts starting, jobs dispatched."""
        with self._lock:
            ready = [h for h in self._hosts.values() if h.state == "ready"]
            return {"ready": sum(h.slots - h.in_use for h in ready),
                    "starting": sum(h.state == "starting" for h in self._hosts.values()),
                    "launched": sum(h.dispatched for h in self._hosts.values())}
