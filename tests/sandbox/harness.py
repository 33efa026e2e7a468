"""Host-side harness of the containment tests: run one model, watch the host while it runs.

``run_model`` runs a model from ``tests/models/hostile/`` through the real
``run_job`` with a ``DockerBackend`` wrapped so that the host can be watched
while the job runs: the container's log file size on the host, its engine-side
settings, its last output, the orchestrator's heartbeat and peak RSS, and
whether any sandbox container is left afterwards.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker

from orchestrator.sandbox.base import ExitStatus
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.docker import LABEL_JOB, LABEL_OWNER, LABEL_ROLE, ROLE_SANDBOX, DockerBackend, owner_id
from orchestrator.sandbox.runner import JobResult, new_job_id, run_job
from sandbox_image.protocol import Job

HOSTILE = Path(__file__).resolve().parents[1] / "models" / "hostile"
SECRET = "sk-secret-do-not-leak-4f9a1c"  # planted in the orchestrator's environment by probe tests


# ------------------------------------------------------------------ host-side watching


@dataclass
class Watch:
    """What the host saw of one container while and after it ran."""

    container_id: str = ""
    log_path: str = ""
    max_log_bytes: int = 0
    host_config: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    output: str = ""  # the container's last lines of stdout/stderr, read before removal
    max_pids: int = 0  # most tasks seen at once in the container's pids cgroup
    peak_memory_bytes: int = 0  # the memory cgroup's high-water mark, last value seen


# cgroup v1 (cgroupfs driver), v2 (cgroupfs), v2 (systemd driver)
_CGROUP_DIRS = ("/sys/fs/cgroup/{controller}/docker/{id}", "/sys/fs/cgroup/docker/{id}",
                "/sys/fs/cgroup/system.slice/docker-{id}.scope")


def _cgroup_read(controller: str, container_id: str, names: tuple[str, ...]) -> int | None:
    """An integer from the container's cgroup (the first of ``names`` that exists)."""
    for pattern in _CGROUP_DIRS:
        base = Path(pattern.format(controller=controller, id=container_id))
        for name in names:
            try:
                return int((base / name).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return None


class WatchedSandbox:
    """Delegates to a DockerSandbox; keeps its settings, samples its log file and cgroups."""

    def __init__(self, inner, client: docker.DockerClient, job_id: str, watch: Watch) -> None:
        self._inner, self._client, self._job_id, self.watch = inner, client, job_id, watch
        self.mounts = inner.mounts
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self) -> None:
        """Start the container, then record its engine-side settings and watch its log."""
        self._inner.start()
        found = self._client.containers.list(all=True, ignore_removed=True, filters={"label": f"{LABEL_JOB}={self._job_id}"})
        if not found:
            return
        info = self._client.api.inspect_container(found[0].id)
        self.watch.container_id, self.watch.log_path = info["Id"], info.get("LogPath", "")
        self.watch.host_config, self.watch.config = info["HostConfig"], info["Config"]
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)
        self._sampler.start()

    def _sample_loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(0.02):
                return

    def _sample(self) -> None:
        watch = self.watch
        try:
            watch.max_log_bytes = max(watch.max_log_bytes, os.stat(watch.log_path).st_size)
        except OSError:
            pass  # rotated this instant, or the container is gone
        pids = _cgroup_read("pids", watch.container_id, ("pids.current",))
        watch.max_pids = max(watch.max_pids, pids or 0)
        # the cgroup goes with the container, so keep the last high-water mark seen
        peak = _cgroup_read("memory", watch.container_id, ("memory.max_usage_in_bytes", "memory.peak"))
        watch.peak_memory_bytes = max(watch.peak_memory_bytes, peak or 0)

    def exit_status(self) -> ExitStatus | None:
        """Delegated."""
        return self._inner.exit_status()

    def wait_exit(self, timeout: float) -> ExitStatus | None:
        """Delegated."""
        return self._inner.wait_exit(timeout)

    def kill(self) -> None:
        """Delegated."""
        self._inner.kill()

    def prioritise(self) -> None:
        """Delegated."""
        self._inner.prioritise()

    def logs(self, tail: int = 50) -> str:
        """Delegated."""
        return self._inner.logs(tail)

    def close(self) -> None:
        """Take a last look (log size, output) before the real close removes everything."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(2)
            self._sample()
        self.watch.output = self._inner.logs(200)
        self._inner.close()


class WatchedBackend:
    """A DockerBackend whose sandboxes are watched; ``watches`` maps job id to Watch."""

    name = "docker (watched)"
    unsafe = False

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client
        self._inner = DockerBackend(client)
        self.watches: dict[str, Watch] = {}

    def create(self, job_id, job_dir, data_dir, config) -> WatchedSandbox:
        """A watched DockerSandbox."""
        self.watches[job_id] = Watch()
        inner = self._inner.create(job_id, job_dir, data_dir, config)
        return WatchedSandbox(inner, self._client, job_id, self.watches[job_id])

    def close(self) -> None:
        """Nothing to release: the client belongs to the session."""


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Heartbeat:
    """A thread that ticks every 20 ms: a long gap means the orchestrator was starved.

    It also samples the orchestrator's open file descriptors, since every
    connection a sandbox makes to its job socket costs the host one.
    """

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.base_fds = self.max_fds = _open_fds()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.02):
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            self.max_fds = max(self.max_fds, _open_fds())
            last = now

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{key} missing from /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset VmHWM (Linux: write 5 to clear_refs) so the next peak is this run's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ running one model


@dataclass
class Outcome:
    """A JobResult plus what the host measured around it."""

    model: str
    result: JobResult
    watch: Watch
    wall_s: float
    max_heartbeat_gap_s: float
    rss_growth_mb: float
    fd_growth: int
    leftovers: list[str]
    ping_s: float

    @property
    def job_s(self) -> float:
        """Seconds from Ready to the end of cleanup: what the job's time limit bounds."""
        return self.wall_s - self.result.startup_seconds

    @property
    def kind(self) -> str:
        """The failure kind, or ``passed``."""
        return self.result.failure.kind.value if self.result.failure else "passed"

    def probe(self) -> dict:
        """The findings a probe model raised as ``RuntimeError("PROBE {json}")``."""
        failure = self.result.failure
        assert failure is not None, f"{self.model} was expected to report findings, but it passed"
        head, sep, payload = failure.message.partition("PROBE ")
        assert sep and head == "RuntimeError: ", f"no PROBE report in {failure.kind.value}: {failure.message[:500]}"
        return json.loads(payload)

    def attack_report(self) -> dict:
        """The ``ATTACK {json}`` line an attacker printed on stdout."""
        for line in self.watch.output.splitlines():
            if line.startswith("ATTACK "):
                return json.loads(line[len("ATTACK "):])
        raise AssertionError(f"no ATTACK line in the container's output:\n{self.watch.output[-2000:]}")


def _leftovers(client: docker.DockerClient, job_id: str) -> list[str]:
    mine = {"label": [f"{LABEL_ROLE}={ROLE_SANDBOX}", f"{LABEL_OWNER}={owner_id()}"]}
    this_job = {"label": [f"{LABEL_JOB}={job_id}"]}
    found = client.containers.list(all=True, ignore_removed=True, filters=mine) + client.containers.list(all=True, ignore_removed=True, filters=this_job)
    return sorted({f"{c.name} ({c.status})" for c in found})


def run_model(client: docker.DockerClient, model: str, config: SandboxConfig, data_dir: Path | None,
              backend=None) -> Outcome:
    """Run ``tests/models/hostile/<model>.py`` in a watched sandbox and measure the host.

    ``backend`` (default: a ``WatchedBackend`` on ``client``) must keep ``watches`` by job id.
    """
    source = (HOSTILE / f"{model}.py").read_text()
    job = Job(job_id=new_job_id(), source=source, class_name="Net", input_shape=(1, 8, 8), num_classes=10)
    backend = backend or WatchedBackend(client)
    exact_peak = _reset_peak_rss()
    rss_before = _status_kb("VmRSS")
    start = time.monotonic()
    with Heartbeat() as beat:
        result = run_job(backend, job, config, data_dir=data_dir)
    wall = time.monotonic() - start
    peak = _status_kb("VmHWM") if exact_peak else _status_kb("VmRSS")
    ping_start = time.monotonic()
    client.ping()
    return Outcome(
        model=model, result=result, watch=backend.watches[job.job_id], wall_s=wall,
        max_heartbeat_gap_s=beat.max_gap, rss_growth_mb=(peak - rss_before) / 1024,
        fd_growth=beat.max_fds - beat.base_fds,
        leftovers=_leftovers(client, job.job_id), ping_s=time.monotonic() - ping_start,
    )


def assert_contained(outcome: Outcome, *, limit_s: float, slack_s: float = 6.0) -> None:
    """The host outlived the model: in time, responsive, not bloated, nothing left behind."""
    assert outcome.job_s <= limit_s + slack_s, (
        f"{outcome.model} ended {outcome.job_s:.1f} s after Ready (limit {limit_s:g} s + {slack_s:g} s to clean up)")
    assert outcome.max_heartbeat_gap_s < 1.0, f"the orchestrator stalled for {outcome.max_heartbeat_gap_s:.2f} s"
    assert outcome.ping_s < 2.0, f"the Docker engine took {outcome.ping_s:.2f} s to answer a ping afterwards"
    assert outcome.rss_growth_mb < 50, f"the orchestrator's RSS grew by {outcome.rss_growth_mb:.0f} MB"
    # A few for the channel, the Docker API and the log; a sandbox must not add its own.
    assert outcome.fd_growth < 64, (
        f"the orchestrator held {outcome.fd_growth} more file descriptors during the job: "
        "connections from the sandbox to its job socket each cost one")
    assert outcome.leftovers == [], f"sandbox containers left behind: {outcome.leftovers}"
