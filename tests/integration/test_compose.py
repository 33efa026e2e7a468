"""compose.yaml through Debian's docker-compose 1.29: it validates, and `up` runs a job to a report.

The orchestrator runs in its own container with the host's Docker socket and starts the
sandboxes beside itself; the runs dir and the jobs dir are mounted at the same path inside
and out. Fails, never skips, when docker-compose or an image is missing.
"""

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.image import project_root
from orchestrator.registry import Registry
from orchestrator.sandbox.docker import LABEL_OWNER, LABEL_ROLE, ROLE_SANDBOX

ROOT = project_root()
COMPOSE_FILE = ROOT / "compose.yaml"
PROFILES = ([], ["gpu"], ["ollama"], ["build"], ["gpu", "ollama", "build"])
ORCHESTRATORS = ("orchestrator", "orchestrator-gpu", "orchestrator-ollama")


def _compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("docker-compose not found: `apt-get install docker-compose` (scripts/setup.sh does)")
    return found


def _env(cwd: Path, **settings: str) -> dict[str, str]:
    """The caller's environment without its RESEARCHER_* settings, run from ``cwd``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(cli.ENV_PREFIX)}
    return {**env, "PWD": str(cwd), **settings}


def _compose(*args: str, cwd: Path, env: dict[str, str], project: str = "researcher-config-test",
             timeout: float = 60) -> subprocess.CompletedProcess:
    argv = [_compose_binary(), "-f", str(COMPOSE_FILE), "-p", project, *args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _config(tmp_path: Path, profiles: list[str]) -> dict:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    proc = _compose(*flags, "config", cwd=tmp_path, env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@pytest.mark.parametrize("profiles", PROFILES, ids=lambda p: "+".join(p) or "default")
def test_the_compose_file_validates_with_every_profile(tmp_path, profiles):
    services = _config(tmp_path, profiles)["services"]
    assert set(ORCHESTRATORS) | {"ollama", "sandbox-image"} <= set(services)


def test_only_the_orchestrators_get_the_docker_socket_and_paths_are_the_same_inside(tmp_path):
    services = _config(tmp_path, ["gpu", "ollama", "build"])["services"]
    for name, service in services.items():
        volumes = [str(v) for v in service.get("volumes", [])]
        has_socket = any("docker.sock" in v for v in volumes)
        assert has_socket == (name in ORCHESTRATORS), name
    runs = f"{tmp_path}/runs"
    for name in ORCHESTRATORS:
        service = services[name]
        env = service["environment"]
        assert env["RESEARCHER_RUNS_DIR"] == runs and env["RESEARCHER_JOBS_DIR"] == "/tmp/researcher-jobs"
        assert f"{runs}:{runs}:rw" in service["volumes"]
        assert "/tmp/researcher-jobs:/tmp/researcher-jobs:rw" in service["volumes"]
        assert "host.docker.internal:host-gateway" in service["extra_hosts"]
    assert services["orchestrator-gpu"]["environment"]["RESEARCHER_DEVICE"] == "cuda"
    assert services["orchestrator-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["orchestrator-ollama"]["environment"]["RESEARCHER_LLM_BASE_URL"] == "http://ollama:11434/v1"
    assert services["orchestrator"]["environment"]["RESEARCHER_DEVICE"] == ""  # empty: the CLI's default


def test_every_run_option_is_passed_through_from_the_environment(tmp_path):
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    wanted = {cli.env_var(a) for a in sub.choices["run"]._actions} - {None}
    env = _config(tmp_path, [])["services"]["orchestrator"]["environment"]
    assert wanted <= set(env), sorted(wanted - set(env))
    settings = {"RESEARCHER_SEEDS": "2", "RESEARCHER_DEVICE": "cuda", "RESEARCHER_JOBS_DIR": "/tmp/rj"}
    proc = _compose("config", cwd=tmp_path, env=_env(tmp_path, **settings))
    env = yaml.safe_load(proc.stdout)["services"]["orchestrator"]["environment"]
    assert {k: env[k] for k in settings} == settings


@pytest.fixture(scope="module")
def orchestrator_image():
    """The orchestrator's image for this checkout (built, or found up to date, like scripts/setup.sh)."""
    from orchestrator.deploy import build_orchestrator_image
    from orchestrator.exceptions import SandboxUnavailable

    try:
        return build_orchestrator_image(log=lambda line: None)
    except SandboxUnavailable as exc:
        pytest.fail(f"the compose test needs the orchestrator image (run scripts/setup.sh): {exc}")


def _containers(client, project: str, owner_host: str | None) -> list[str]:
    """Containers of the compose project, and sandboxes whose orchestrator ran on ``owner_host``."""
    left = [c.name for c in client.containers.list(all=True, ignore_removed=True, filters={"label": f"com.docker.compose.project={project}"})]
    if owner_host is not None:
        sandboxes = client.containers.list(all=True, ignore_removed=True, filters={"label": f"{LABEL_ROLE}={ROLE_SANDBOX}"})
        left += [c.name for c in sandboxes if c.labels.get(LABEL_OWNER, "").startswith(f"{owner_host}:")]
    return left


@pytest.mark.docker
@pytest.mark.slow
def test_compose_up_runs_a_short_cpu_job_to_a_report(docker_client, orchestrator_image, tmp_path):
    project = f"researcher-test-{uuid.uuid4().hex[:8]}"
    jobs = Path(tempfile.mkdtemp(prefix="rj-"))  # short: the socket path must fit 107 bytes
    env = _env(tmp_path, RESEARCHER_GOAL="a small digits classifier", RESEARCHER_DATASET="digits",
               RESEARCHER_MAX_CANDIDATES="2", RESEARCHER_SEEDS="1", RESEARCHER_PARALLEL="2",
               RESEARCHER_NAME="compose", RESEARCHER_JOBS_DIR=str(jobs), RESEARCHER_DEVICE="")
    owner_host = None
    try:
        proc = _compose("up", "--exit-code-from", "orchestrator", "orchestrator",
                        cwd=tmp_path, env=env, project=project, timeout=420)
        out = proc.stdout + proc.stderr
        [cid] = _compose("ps", "-q", "orchestrator", cwd=tmp_path, env=env, project=project).stdout.split()
        owner_host = docker_client.containers.get(cid).attrs["Config"]["Hostname"]
        assert proc.returncode == 0, out[-4000:]
        assert "run finished" in out and "report: " in out, out[-4000:]
    finally:
        down = _compose("down", "-v", "--remove-orphans", cwd=tmp_path, env=env, project=project, timeout=120)
        left = _containers(docker_client, project, owner_host)
        shutil.rmtree(jobs, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert left == [], f"containers left behind: {left}"
    run = tmp_path / "runs" / "compose"  # on the host, where the container wrote it
    for name in ("report.md", "report.html", "experiments/registry.sqlite", "experiments/registry.json"):
        assert (run / name).is_file(), name
    with Registry.open(run, readonly=True) as registry:
        settings, records = registry.settings, registry.candidates()
    assert (settings.dataset, settings.seeds, settings.parallel, settings.max_candidates) == ("digits", (0,), 2, 2)
    assert len(records) == 2 and all(r.status == "passed" for r in records), [(r.id, r.status) for r in records]
    assert all(0.5 < r.value("accuracy") <= 1.0 for r in records)  # real scores, computed on the host side
    report = (run / "report.md").read_text()
    assert all(r.id in report for r in records)
