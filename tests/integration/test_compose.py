"""compose.yaml through Debian's docker-compose 1.29: it validates, and `up` runs a job to a report.

Privilege separation: only the launcher services hold the host's Docker socket; the
orchestrators run without it, as a non-root uid, with a read-only root (tmpfs /tmp), no
capabilities, no-new-privileges and no GPU, and reach sandboxes through the launcher's
socket. The launcher's root and the runs dir are mounted at the same path inside and out.
Fails, never skips, when docker-compose or an image is missing.
"""

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.sandbox.image import project_root
from orchestrator.launcher.cli import config_from_args
from orchestrator.launcher.config import validate as validate_launcher
from orchestrator.launcher.server import LABEL_LAUNCHER
from orchestrator.registry import Registry
from orchestrator.sandbox.docker import LABEL_ROLE, ROLE_SANDBOX

ROOT = project_root()
COMPOSE_FILE = ROOT / "compose.yaml"
PROFILES = ([], ["gpu"], ["ollama"], ["build"], ["gpu", "ollama", "build"])
ORCHESTRATORS = ("orchestrator", "orchestrator-gpu", "orchestrator-ollama")
LAUNCHERS = ("launcher", "launcher-gpu")
#: Which launcher each orchestrator talks to.
LAUNCHER_OF = {"orchestrator": "launcher", "orchestrator-gpu": "launcher-gpu", "orchestrator-ollama": "launcher"}
DEFAULT_ROOT = "/tmp/researcher-launcher"
SOCKET = "/var/run/docker.sock"


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


def _config(tmp_path: Path, profiles: list[str], **settings: str) -> dict:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    proc = _compose(*flags, "config", cwd=tmp_path, env=_env(tmp_path, **settings))
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def _all_services(tmp_path: Path, **settings: str) -> dict:
    return _config(tmp_path, ["gpu", "ollama", "build"], **settings)["services"]


def _volumes(service: dict) -> list[str]:
    return [str(v) for v in service.get("volumes", [])]


def _launcher_args(service: dict, monkeypatch):
    """The launcher's parsed arguments, as its container would parse them (its environment only)."""
    for name in [n for n in os.environ if n.startswith(cli.ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in (service.get("environment") or {}).items():
        monkeypatch.setenv(name, "" if value is None else str(value))
    return cli.build_parser().parse_args(service["command"])


@pytest.mark.parametrize("profiles", PROFILES, ids=lambda p: "+".join(p) or "default")
def test_the_compose_file_validates_with_every_profile(tmp_path, profiles):
    services = _config(tmp_path, profiles)["services"]
    assert set(ORCHESTRATORS) | set(LAUNCHERS) | {"ollama", "sandbox-image"} <= set(services)


def test_only_the_launchers_get_the_docker_socket(tmp_path):
    services = _all_services(tmp_path)
    for name, service in services.items():
        has_socket = any("docker.sock" in v for v in _volumes(service))
        assert has_socket == (name in LAUNCHERS), name
    for name in LAUNCHERS:
        assert f"{SOCKET}:{SOCKET}:rw" in services[name]["volumes"]


def test_the_orchestrators_are_unprivileged(tmp_path):
    services = _all_services(tmp_path)
    for name in ORCHESTRATORS:
        service = services[name]
        assert service["user"] == "1000:1000", name  # RESEARCHER_UID / RESEARCHER_GID unset
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"] and "cap_add" not in service, name
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert [t.split(":")[0] for t in service["tmpfs"]] == ["/tmp"], name
        assert "deploy" not in service and "runtime" not in service and "privileged" not in service, name
        assert service.get("network_mode") is None and "pid" not in service, name
        env = service["environment"]
        assert env["HOME"] == "/tmp" and env["MPLCONFIGDIR"].startswith("/tmp/"), name
        assert not any(SOCKET in v or v.startswith("/var/run") for v in _volumes(service)), name
        assert service["depends_on"][LAUNCHER_OF[name]] == {"condition": "service_healthy"}, name
    assert services["orchestrator-ollama"]["depends_on"]["ollama"] == {"condition": "service_started"}


def test_the_launchers_are_confined_to_what_they_need(tmp_path):
    services = _all_services(tmp_path)
    for name in LAUNCHERS:
        service = services[name]
        assert service["network_mode"] == "none", name
        assert service["read_only"] is True and [t.split(":")[0] for t in service["tmpfs"]] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"] and sorted(service["cap_add"]) == ["CHOWN", "DAC_READ_SEARCH"], name
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert "privileged" not in service and "ports" not in service, name
        assert service["command"][0] == "launcher", name
    assert "deploy" not in services["launcher"]
    devices = services["launcher-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_paths_are_the_same_inside_and_out_and_each_orchestrator_has_its_launcher(tmp_path, monkeypatch):
    services = _all_services(tmp_path)
    runs = f"{tmp_path}/runs"
    roots = {}
    for name in LAUNCHERS:
        args = _launcher_args(services[name], monkeypatch)
        config = validate_launcher(config_from_args(args))
        roots[name] = config.root
        assert f"{config.root}:{config.root}:rw" in services[name]["volumes"], name
        assert config.data_sources == (runs,), name
        assert f"{runs}:{runs}:ro" in services[name]["volumes"], name  # it only reads the runs dir
        assert (config.client_uid, config.client_gid) == (1000, 1000), name
        assert services[name]["healthcheck"]["test"] == ["CMD", "test", "-S", config.socket_path], name
    assert roots == {"launcher": DEFAULT_ROOT, "launcher-gpu": f"{DEFAULT_ROOT}-gpu"}
    assert _launcher_args(services["launcher"], monkeypatch).gpus == "none"
    assert _launcher_args(services["launcher-gpu"], monkeypatch).gpus == "all"
    for name in ORCHESTRATORS:
        service = services[name]
        env, root = service["environment"], roots[LAUNCHER_OF[name]]
        assert env["RESEARCHER_LAUNCHER"] == f"ipc://{root}/launcher.sock", name
        assert env["RESEARCHER_RUNS_DIR"] == runs, name
        assert sorted(_volumes(service)) == sorted([f"{runs}:{runs}:rw", f"{root}:{root}:rw",
                                                    "/usr/share/datasets:/usr/share/datasets:ro"]), name
        assert "host.docker.internal:host-gateway" in service["extra_hosts"], name
    assert services["orchestrator-gpu"]["environment"]["RESEARCHER_DEVICE"] == "cuda"
    assert services["orchestrator-ollama"]["environment"]["RESEARCHER_LLM_BASE_URL"] == "http://ollama:11434/v1"
    assert services["orchestrator"]["environment"]["RESEARCHER_DEVICE"] == ""  # empty: the CLI's default


def test_every_run_option_is_passed_through_from_the_environment(tmp_path):
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    # --cluster is not compose's: its orchestrator starts sandboxes only through its launcher, and a
    # Ray cluster is started with `ray start` on the hosts (--cluster cannot go with --launcher).
    wanted = {cli.env_var(a) for a in sub.choices["run"]._actions} - {None, "RESEARCHER_CLUSTER"}
    env = _config(tmp_path, [])["services"]["orchestrator"]["environment"]
    assert "RESEARCHER_CLUSTER" not in env and "RAY_ADDRESS" not in env
    assert wanted <= set(env), sorted(wanted - set(env))
    settings = {"RESEARCHER_SEEDS": "2", "RESEARCHER_DEVICE": "cuda", "RESEARCHER_JOBS_DIR": "/tmp/rj"}
    proc = _compose("config", cwd=tmp_path, env=_env(tmp_path, **settings))
    env = yaml.safe_load(proc.stdout)["services"]["orchestrator"]["environment"]
    assert {k: env[k] for k in settings} == settings


def test_every_launcher_option_is_set_by_compose_and_the_maxima_come_from_the_environment(tmp_path, monkeypatch):
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    actions = [a for a in sub.choices["launcher"]._actions if cli.env_var(a)]
    settings = {"RESEARCHER_LAUNCHER_MAX_MEMORY": "8g", "RESEARCHER_LAUNCHER_MAX_CPUS": "3.5",
                "RESEARCHER_LAUNCHER_MAX_PIDS": "512", "RESEARCHER_LAUNCHER_MAX_TIME": "600",
                "RESEARCHER_LAUNCHER_MAX_SANDBOXES": "5", "RESEARCHER_LAUNCHER_RUNTIMES": "runc,runsc",
                "RESEARCHER_LAUNCHER_LEASE": "30", "RESEARCHER_LAUNCHER_GPUS": "0,1",
                "RESEARCHER_IMAGE": "my-sandbox:1", "RESEARCHER_UID": "4242", "RESEARCHER_GID": "4343",
                "RESEARCHER_LAUNCHER_ROOT": "/srv/rl",
                "RESEARCHER_LAUNCHER": "ipc:///elsewhere/launcher.sock"}  # never read from the shell
    services = _all_services(tmp_path, **settings)
    for name in LAUNCHERS:
        service = services[name]
        on_line = {arg.split("=")[0] for arg in service["command"][1:]}
        for action in actions:
            flag = next(o for o in action.option_strings if o.startswith("--"))
            assert flag in on_line or cli.env_var(action) in service["environment"], f"{name}: {flag} is not set"
        config = validate_launcher(config_from_args(_launcher_args(service, monkeypatch)))
        assert (config.max_memory, config.max_cpus, config.max_pids, config.max_time_s, config.max_sandboxes,
                config.runtimes, config.lease_s, config.image, config.client_uid, config.client_gid) == (
            "8g", 3.5, 512, 600.0, 5, ("runc", "runsc"), 30.0, "my-sandbox:1", 4242, 4343), name
    assert _launcher_args(services["launcher-gpu"], monkeypatch).gpus == "0,1"
    assert _launcher_args(services["launcher"], monkeypatch).gpus == "none"  # the CPU launcher grants none
    assert services["orchestrator"]["environment"]["RESEARCHER_LAUNCHER"] == "ipc:///srv/rl/launcher.sock"
    assert services["orchestrator-gpu"]["environment"]["RESEARCHER_LAUNCHER"] == "ipc:///srv/rl-gpu/launcher.sock"
    assert all(services[name]["user"] == "4242:4343" for name in ORCHESTRATORS)
    # Unset, every maximum is the launcher's own default.
    defaults = validate_launcher(config_from_args(_launcher_args(_all_services(tmp_path)["launcher"], monkeypatch)))
    assert (defaults.max_memory, defaults.max_cpus, defaults.lease_s, defaults.runtimes) == (
        "16g", float(os.cpu_count() or 1), 15.0, ("runc",))


@pytest.fixture(scope="module")
def orchestrator_image():
    """The orchestrator's image for this checkout (built, or found up to date, like scripts/setup.sh)."""
    from orchestrator.deploy import build_orchestrator_image
    from orchestrator.exceptions import SandboxUnavailable

    try:
        return build_orchestrator_image(log=lambda line: None)
    except SandboxUnavailable as exc:
        pytest.fail(f"the compose test needs the orchestrator image (run scripts/setup.sh): {exc}")


def _containers(client, project: str, launcher_root: str) -> list[str]:
    """Containers of the compose project, and sandboxes its launcher (at ``launcher_root``) started."""
    left = [c.name for c in client.containers.list(all=True, ignore_removed=True, filters={"label": f"com.docker.compose.project={project}"})]
    filters = {"label": [f"{LABEL_ROLE}={ROLE_SANDBOX}", f"{LABEL_LAUNCHER}={launcher_root}"]}
    return left + [c.name for c in client.containers.list(all=True, ignore_removed=True, filters=filters)]


#: Run in the orchestrator's container: what it can write, whether the socket is there, its privileges.
PROBE = """
import errno, json, os
out = {"uid": os.getuid(), "gid": os.getgid(), "writes": {}}
for path in ("/opt/probe", "/etc/probe", "/usr/local/lib/probe", "/probe"):
    try:
        with open(path, "w") as f:
            f.write("x")
        out["writes"][path] = "written"
    except OSError as exc:
        out["writes"][path] = errno.errorcode[exc.errno]
try:
    os.stat("/var/run/docker.sock")
    out["socket"] = "present"
except OSError as exc:
    out["socket"] = errno.errorcode[exc.errno]
out["root"] = [line.split()[3].split(",")[0] for line in open("/proc/self/mounts") if line.split()[1] == "/"]
out["status"] = {k: v.strip() for k, v in (line.split(":", 1) for line in open("/proc/self/status"))
                 if k in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs")}
with open("/tmp/probe", "w") as f:
    f.write("the tmpfs is writable")
out["tmp"] = "written"
print("PROBE " + json.dumps(out))
"""


@pytest.mark.docker
@pytest.mark.slow
def test_compose_up_runs_a_short_cpu_job_to_a_report(docker_client, orchestrator_image, tmp_path):
    project = f"researcher-test-{uuid.uuid4().hex[:8]}"
    launcher_root = f"/tmp/rl-{uuid.uuid4().hex[:12]}"  # unique per test, short (<= 60 bytes)
    # The orchestrator is not root: the runs dir must be its (as root here, give it to uid 10001).
    uid, gid = (10001, 10001) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    runs = tmp_path / "runs"
    runs.mkdir()
    os.chown(runs, uid, gid)
    env = _env(tmp_path, RESEARCHER_GOAL="a small wine classifier", RESEARCHER_DATASET="wine",
               RESEARCHER_MAX_CANDIDATES="2", RESEARCHER_SEEDS="1", RESEARCHER_PARALLEL="2",
               RESEARCHER_NAME="compose", RESEARCHER_DEVICE="", RESEARCHER_UID=str(uid), RESEARCHER_GID=str(gid),
               RESEARCHER_LAUNCHER_ROOT=launcher_root)
    try:
        proc = _compose("up", "--exit-code-from", "orchestrator", "orchestrator",
                        cwd=tmp_path, env=env, project=project, timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        assert "run finished" in out and "report: " in out, out[-4000:]
        [orchestrator] = _compose("ps", "-q", "orchestrator", cwd=tmp_path, env=env, project=project).stdout.split()
        [launcher] = _compose("ps", "-q", "launcher", cwd=tmp_path, env=env, project=project).stdout.split()
        orchestrator = docker_client.containers.get(orchestrator).attrs
        launcher = docker_client.containers.get(launcher).attrs
        probe = _compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "python", "orchestrator", "-c", PROBE,
                         cwd=tmp_path, env=env, project=project, timeout=120)
    finally:
        down = _compose("down", "-v", "--remove-orphans", cwd=tmp_path, env=env, project=project, timeout=120)
        left = _containers(docker_client, project, launcher_root)
        shutil.rmtree(launcher_root, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert left == [], f"containers left behind: {left}"

    # The orchestrator ran without the socket, as uid 10001, read-only, with no capability and no GPU.
    host = orchestrator["HostConfig"]
    assert not any("docker.sock" in (m.get("Source", "") + m.get("Destination", "")) for m in orchestrator["Mounts"])
    assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert orchestrator["Config"]["User"] == f"{uid}:{gid}" and not orchestrator["Config"]["User"].startswith("0:")
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"] and list(host["Tmpfs"]) == ["/tmp"]
    assert not host.get("DeviceRequests")
    # Only the launcher had the socket, with no network and two capabilities.
    assert any(m["Destination"] == SOCKET for m in launcher["Mounts"])
    assert launcher["HostConfig"]["NetworkMode"] == "none" and launcher["HostConfig"]["ReadonlyRootfs"] is True
    assert sorted(c.removeprefix("CAP_") for c in launcher["HostConfig"]["CapAdd"]) == ["CHOWN", "DAC_READ_SEARCH"]

    # Inside: every write to the root filesystem fails (read-only), there is no socket, no capability.
    assert probe.returncode == 0, probe.stdout + probe.stderr
    [line] = [line for line in probe.stdout.splitlines() if line.startswith("PROBE ")]
    seen = json.loads(line[len("PROBE "):])
    assert (seen["uid"], seen["gid"]) == (uid, gid), seen
    assert set(seen["writes"].values()) == {"EROFS"}, seen
    assert seen["root"] == ["ro"] and seen["socket"] == "ENOENT" and seen["tmp"] == "written", seen
    assert seen["status"] == {"CapEff": "0" * 16, "CapPrm": "0" * 16, "CapBnd": "0" * 16, "NoNewPrivs": "1"}, seen

    run = runs / "compose"  # on the host, where the container wrote it, as the orchestrator's uid
    for name in ("report.md", "report.html", "experiments/registry.sqlite", "experiments/registry.json"):
        assert (run / name).is_file(), name
    assert (run.stat().st_uid, (run / "report.md").stat().st_uid) == (uid, uid)
    with Registry.open(run, readonly=True) as registry:
        settings, records = registry.settings, registry.candidates()
    assert (settings.dataset, settings.seeds, settings.parallel, settings.max_candidates) == ("wine", (0,), 2, 2)
    assert len(records) == 2 and all(r.status == "passed" for r in records), [(r.id, r.status) for r in records]
    assert all(0.5 < r.value("accuracy") <= 1.0 for r in records)  # real scores, computed on the host side
    report = (run / "report.md").read_text()
    assert all(r.id in report for r in records)
