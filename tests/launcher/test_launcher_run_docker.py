"""Runs through `researcher launcher`: the orchestrator holds no Docker socket, the launcher cleans up.

`researcher run --launcher` finishes with an orchestrator that cannot reach Docker at
all; an orchestrator killed outright loses its sandboxes once its lease lapses; a
launcher stopped with SIGTERM removes everything it made; and the hostile models end
with the same recorded failures through the launcher as through Docker directly.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.launcher.client import LauncherBackend, LauncherClient
from orchestrator.launcher.protocol import Create, Hello, JobDir, MakeJobDir
from orchestrator.launcher.server import LABEL_LAUNCHER
from orchestrator.sandbox.channel import Channel
from orchestrator.sandbox.config import DEFAULT_IMAGE, SandboxConfig
from orchestrator.sandbox.docker import container_kwargs
from sandbox_image.protocol import DEFAULT_MAX_MESSAGE_BYTES, Ready
from tests.sandbox.harness import (
    SECRET,
    Outcome,
    Watch,
    WatchedSandbox,
    assert_contained,
    run_model,
)
from tests.sandbox.test_hostile import CASES, HANG_S, QUICK_S
from tests.sandbox.test_isolation import NOBODY, REFUSED, _assert_only_loopback

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
LEASE_S = 3.0


def _env(**extra: str) -> dict[str, str]:
    """This environment without RESEARCHER_* settings that would change a run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESEARCHER_")}
    env.update(extra)
    return env


# An orchestrator that reaches Docker at all fails: it must go through the launcher.
NO_DOCKER = _env(DOCKER_HOST="unix:///nonexistent/docker.sock")


class LauncherProcess:
    """`researcher launcher` as a child process, ready once it printed its address."""

    def __init__(self, root: Path, runs: Path, log: Path, lease_s: float) -> None:
        self.root, self.runs, self.log = root, runs, log
        self.address = f"ipc://{root}/launcher.sock"
        cmd = [sys.executable, "-m", "orchestrator.cli", "launcher", "--root", str(root), "--data-sources", str(runs),
               "--lease", str(lease_s), "--max-cpus", "2", "--max-memory", "4g"]
        with open(log, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO, env=_env())
        line = self._read_line(60.0)
        assert line.startswith(f"launcher ready: {self.address}"), f"{line!r}; log:\n{self.log_text()}"

    def _read_line(self, timeout_s: float) -> str:
        until, buf = time.monotonic() + timeout_s, b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf and (left := until - time.monotonic()) > 0:
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
        return buf.decode(errors="replace")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.proc.stdout.close()


@pytest.fixture
def start_launcher(launcher_root, tmp_path, docker_client, sandboxes_of):
    """``start_launcher(lease_s=3)``: a launcher process on ``launcher_root`` for runs in ``tmp_path/runs``."""
    started: list[LauncherProcess] = []

    def start(lease_s: float = LEASE_S) -> LauncherProcess:
        runs = tmp_path / "runs"
        runs.mkdir(exist_ok=True)
        process = LauncherProcess(launcher_root, runs, tmp_path / "launcher.log", lease_s)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    left = sandboxes_of(launcher_root)
    for name in left:
        docker_client.containers.get(name).remove(force=True, v=True)
    assert not left, f"launcher sandboxes left behind: {left}"


def _run_cmd(launcher: LauncherProcess, *args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "run", "--runs-dir", str(launcher.runs),
            "--launcher", launcher.address, "--seeds", "1", "--name", "r", *args]


def _wait_for(predicate, timeout_s: float, step_s: float = 0.2) -> bool:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


# ------------------------------------------------------------------ runs


def test_a_run_through_the_launcher_needs_no_docker_and_leaves_nothing(start_launcher, sandboxes_of, dirs_in):
    launcher = start_launcher()
    # wine: digits' second design is a 1.2M-parameter net that alone takes ~50 s of CI on one core
    done = subprocess.run(_run_cmd(launcher, "--dataset", "wine", "--max-candidates", "2"),
                          capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=NO_DOCKER)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}\nlauncher:\n{launcher.log_text()[-2000:]}"
    run = launcher.runs / "r"
    assert (run / "report.md").is_file() and "run finished" in done.stdout
    log = launcher.log_text()
    assert "staged " in log and "started sandbox" in log, log
    # the run ended its session: every sandbox, job dir and data copy went with it
    assert sandboxes_of(launcher.root) == []
    assert dirs_in(launcher.root) == []
    assert launcher.proc.poll() is None, "the launcher stopped with the run"


@pytest.mark.slow
def test_an_orchestrator_killed_mid_run_loses_its_sandboxes_when_its_lease_lapses(start_launcher, sandboxes_of,
                                                                                   dirs_in, docker_client):
    launcher = start_launcher()
    proc = subprocess.Popen(_run_cmd(launcher, "--max-candidates", "20", "--target", "accuracy=0.9999"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=NO_DOCKER)
    try:
        live = {"label": f"{LABEL_LAUNCHER}={launcher.root}", "status": "running"}
        running = _wait_for(lambda: docker_client.containers.list(ignore_removed=True, filters=live), 120)
        assert running, f"no sandbox started; launcher:\n{launcher.log_text()[-2000:]}"
        assert dirs_in(launcher.root), "a running sandbox without its job dir"
    finally:
        proc.kill()  # SIGKILL: no Release, no clean-up of its own
        proc.wait(30)
    killed_at = time.monotonic()
    gone = _wait_for(lambda: not sandboxes_of(launcher.root) and not dirs_in(launcher.root), LEASE_S + 12)
    assert gone, (f"left {time.monotonic() - killed_at:.1f} s after the kill: {sandboxes_of(launcher.root)} "
                  f"{dirs_in(launcher.root)}; launcher:\n{launcher.log_text()[-2000:]}")
    assert time.monotonic() - killed_at >= LEASE_S - 1.0, "removed before the lease lapsed"
    assert "stopped renewing its lease" in launcher.log_text()
    assert launcher.proc.poll() is None, "the launcher died with its client"


def test_sigterm_stops_the_launcher_and_removes_every_sandbox_it_made(start_launcher, sandboxes_of, dirs_in):
    launcher = start_launcher(lease_s=120.0)  # a long lease: the SIGTERM, not the lease, must remove it
    client = LauncherClient(launcher.address)
    channel = None
    try:
        client.request(Hello(session=client.session))
        reply = client.request(MakeJobDir(session="", job_id="sigterm1"))
        assert isinstance(reply, JobDir)
        channel = Channel(Path(reply.path), max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES)
        client.request(Create(session="", job_id="sigterm1", memory="512m", cpus=1.0, pids=128, timeout_s=120.0),
                       timeout_s=60)
        assert isinstance(channel.recv(60.0), Ready), "the sandbox worker never said Ready"
        assert len(sandboxes_of(launcher.root)) == 1 and dirs_in(launcher.root)

        assert launcher.stop() == 0, launcher.log_text()[-2000:]
        assert sandboxes_of(launcher.root) == []
        assert dirs_in(launcher.root) == []
        assert not (launcher.root / "launcher.sock").exists()
    finally:
        if channel is not None:
            channel.close()
        client.close()


# ------------------------------------------------------------------ the hostile models through the launcher


class WatchedLauncherBackend:
    """A LauncherBackend whose sandboxes the host watches (as tests.sandbox.harness does for Docker)."""

    name = "launcher (watched)"
    unsafe = False

    def __init__(self, address: str, client) -> None:
        self._inner = LauncherBackend(address)
        self._client = client
        self.watches: dict[str, Watch] = {}

    def make_job_dir(self, job_id: str) -> Path:
        return self._inner.make_job_dir(job_id)

    def create(self, job_id, job_dir, data_dir, config) -> WatchedSandbox:
        self.watches[job_id] = Watch()
        return WatchedSandbox(self._inner.create(job_id, job_dir, data_dir, config), self._client, job_id,
                              self.watches[job_id])

    def close(self) -> None:
        self._inner.close()


@pytest.fixture
def launcher_run(served, docker_client, sandboxes_of, dirs_in):
    """Run a hostile model by name through a LauncherBackend and the in-process launcher."""

    def run(model: str, *, timeout_s: float, memory: str = "512m", data_dir: Path | None = None) -> Outcome:
        config = SandboxConfig(timeout_s=timeout_s, memory=memory, startup_timeout_s=60.0)
        backend = WatchedLauncherBackend(served.address, docker_client)
        try:
            outcome = run_model(docker_client, model, config, data_dir, backend=backend)
        finally:
            backend.close()
        assert outcome.watch.container_id, "the launcher's container was never seen"
        assert outcome.watch.config["Labels"].get("org.pytorch-researcher.launcher") == str(served.launcher.root)
        assert sandboxes_of(served.launcher.root) == [] and dirs_in(served.launcher.root) == []
        return outcome

    return run


# sleep_import hangs like spin_forward, a stage earlier: the same kill at the limit, 10 s more to prove it again
THROUGH_LAUNCHER = [case for case in CASES if case[0] != "sleep_import"]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "limit_s", "kind", "says"), THROUGH_LAUNCHER, ids=[c[0] for c in THROUGH_LAUNCHER])
def test_hostile_model_through_the_launcher_fails_as_through_docker(launcher_run, model, limit_s, kind, says):
    outcome = launcher_run(model, timeout_s=limit_s)

    failure = outcome.result.failure
    assert failure is not None, f"{model} passed; expected {kind}"
    assert failure.kind.value == kind, f"{model}: {failure.kind.value} ({failure.message[:300]}); logs:\n{outcome.result.logs[-800:]}"
    assert says in failure.message, f"{model}: message does not say {says!r}: {failure.message[:300]}"
    assert outcome.result.ready is not None, f"{model}: the worker never said Ready"
    if kind == "timeout":
        assert outcome.job_s >= limit_s
        assert outcome.result.exit is not None and outcome.result.exit.exit_code == 137
    assert_contained(outcome, limit_s=limit_s)


@pytest.mark.slow
def test_memory_bomb_through_the_launcher_is_killed_at_the_cap(launcher_run):
    outcome = launcher_run("memory_bomb", timeout_s=QUICK_S, memory="512m")

    assert outcome.kind == "out_of_memory", outcome.result.failure
    assert outcome.result.exit is not None and outcome.result.exit.oom_killed
    assert outcome.watch.host_config["Memory"] == outcome.watch.host_config["MemorySwap"] == 512 << 20
    assert outcome.watch.peak_memory_bytes <= 512 << 20
    assert_contained(outcome, limit_s=QUICK_S)


@pytest.mark.slow
def test_fork_bomb_through_the_launcher_is_held_at_the_pids_cap(launcher_run):
    outcome = launcher_run("fork_bomb", timeout_s=HANG_S, memory="2g")

    assert outcome.kind == "timeout", outcome.result.failure
    assert outcome.watch.host_config["PidsLimit"] == 256
    # pids.current can pass pids.max by a task the runtime attaches (kernel docs, cgroup-v1/pids.rst: "not
    # possible to violate a cgroup PID policy through fork()"); measured once in CI: 257. More is a leak.
    assert 200 <= outcome.watch.max_pids <= 257, f"{outcome.watch.max_pids} tasks seen (cap 256)"
    assert_contained(outcome, limit_s=HANG_S)


@pytest.mark.slow
def test_probe_through_the_launcher_sees_no_host_environment(launcher_run, docker_client, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # in this process, which is the launcher's too
    monkeypatch.setenv("RESEARCHER_LLM_API_KEY", SECRET)
    image_env = {item.split("=", 1)[0] for item in docker_client.images.get(DEFAULT_IMAGE).attrs["Config"].get("Env") or []}
    ours = container_kwargs("probe", Path("/nonexistent"), None, SandboxConfig())["environment"]
    allowed = image_env | set(ours) | {"HOSTNAME", "HOME", "PATH", "TORCHINDUCTOR_CACHE_DIR"}
    outcome = launcher_run("probe_env", timeout_s=QUICK_S)

    assert outcome.kind == "instantiate_error"
    assert SECRET not in outcome.result.failure.message
    found = outcome.probe()
    assert set(found["env"]) <= allowed, set(found["env"]) - allowed
    assert (found["uid"], found["euid"], found["gid"], found["egid"]) == (NOBODY,) * 4
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(found["status"][key], 16) == 0, f"{key} = {found['status'][key]}"
    assert found["status"]["NoNewPrivs"] == "1"
    assert not any(SECRET in item for item in outcome.watch.config["Env"])
    assert_contained(outcome, limit_s=QUICK_S)


@pytest.mark.slow
def test_probe_through_the_launcher_writes_only_to_tmp_and_sees_only_the_staged_copy(launcher_run, tmp_path):
    data = tmp_path / "run" / "data"  # below the launcher's data source, as a run's prepared data is
    data.mkdir(parents=True)
    (data / "test_x.npy").write_bytes(b"inputs only")
    outcome = launcher_run("probe_fs", timeout_s=QUICK_S, data_dir=data)

    found = outcome.probe()
    writes = found["writes"]
    assert writes.pop("/tmp") == "ok"
    assert writes.pop("/dev/shm") in REFUSED | {"ok"}
    assert {path: err for path, err in writes.items() if err not in REFUSED} == {}
    assert found["docker_sockets"] == []
    assert set(found["sockets"]) <= {"/job/worker.sock"}, found["sockets"]
    binds = outcome.watch.host_config["Binds"]
    assert len(binds) == 2 and all(b.endswith((":/job:ro", ":/data:ro")) for b in binds), binds
    assert not any(str(data) in b for b in binds), f"the source was mounted, not the launcher's copy: {binds}"
    assert_contained(outcome, limit_s=QUICK_S)


@pytest.mark.slow
def test_probe_through_the_launcher_has_no_network(launcher_run):
    outcome = launcher_run("probe_net", timeout_s=QUICK_S)

    found = outcome.probe()
    _assert_only_loopback(found)
    assert found["proc_net_dev"] == ["lo"] and found["routes"] == []
    assert outcome.watch.host_config["NetworkMode"] == "none"
    assert_contained(outcome, limit_s=QUICK_S)


@pytest.mark.slow
def test_unix_socket_attacker_through_the_launcher_is_shrugged_off(launcher_run):
    outcome = launcher_run("unix_socket_attack", timeout_s=QUICK_S)

    report = outcome.attack_report()
    assert "/job/worker.sock" in report, f"the attacker did not find the job socket: {sorted(report)}"
    assert not any("launcher.sock" in path for path in report), json.dumps(report)[:500]
    assert outcome.kind == "passed", f"{outcome.result.failure}; logs:\n{outcome.result.logs[-800:]}"
    assert_contained(outcome, limit_s=QUICK_S)
