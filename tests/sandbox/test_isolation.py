"""What a model can see and touch from inside the sandbox: probes report, the host checks.

The probe models collect findings inside the container and raise them as
``RuntimeError("PROBE {json}")``; the host parses the Failure message. The
engine-side view (``docker inspect`` of the live container) is checked too, so
that a setting the probes cannot observe is still proven to be applied.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.docker import container_kwargs
from tests.sandbox.harness import SECRET, assert_contained

pytestmark = pytest.mark.docker

LIMIT_S = 60.0
GVISOR_LIMIT_S = 90.0  # torch imports in about 6 s under gVisor, more on a busy machine
NOBODY = 65534
REFUSED = {"EROFS", "EACCES"}


@pytest.fixture
def planted_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets in the orchestrator's own environment, as a user running with an API key has."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("RESEARCHER_LLM_API_KEY", SECRET)


@pytest.fixture
def allowed_env_names(image_env_names: set[str]) -> set[str]:
    """Variables a sandbox may have: the image's, the backend's own, and the kernel/engine basics."""
    ours = container_kwargs("probe", Path("/nonexistent"), None, SandboxConfig())["environment"]
    # torch sets TORCHINDUCTOR_CACHE_DIR in its own process when the worker warms its imports
    return image_env_names | set(ours) | {"HOSTNAME", "HOME", "PATH", "TORCHINDUCTOR_CACHE_DIR"}


def test_engine_applies_every_hardening_setting(sandbox_run, planted_secrets):
    outcome = sandbox_run("control_mlp", timeout_s=LIMIT_S)

    assert outcome.kind == "passed", outcome.result.failure
    host, config = outcome.watch.host_config, outcome.watch.config
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["Privileged"] is False
    assert [cap.upper() for cap in host["CapDrop"]] == ["ALL"] and not host.get("CapAdd")
    assert any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"])
    assert host["PidsLimit"] == 256
    assert host["Memory"] == host["MemorySwap"] == 512 * 1024 * 1024
    assert host["Init"] is True
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}}
    assert "size=256m" in host["Tmpfs"]["/tmp"] and "noexec" in host["Tmpfs"]["/tmp"]
    assert {u["Name"]: u["Hard"] for u in host["Ulimits"]}["core"] == 0
    assert host["PidMode"] == "" and host["IpcMode"] in ("private", "") and not host.get("Devices")
    binds = host.get("Binds") or []
    assert len(binds) == 1 and binds[0].endswith(":/job:ro"), binds
    assert not any("docker.sock" in bind or "containerd" in bind for bind in binds)
    assert config["User"] == f"{NOBODY}:{NOBODY}"
    assert not any(SECRET in item or "API_KEY" in item for item in config["Env"])
    assert_contained(outcome, limit_s=LIMIT_S)


def test_probe_sees_no_host_environment_and_no_privileges(sandbox_run, planted_secrets, allowed_env_names):
    outcome = sandbox_run("probe_env", timeout_s=LIMIT_S)

    assert outcome.kind == "instantiate_error"
    assert SECRET not in outcome.result.failure.message
    found = outcome.probe()
    assert set(found["env"]) <= allowed_env_names, set(found["env"]) - allowed_env_names
    assert isinstance(found["pid1_env"], dict) and set(found["pid1_env"]) <= allowed_env_names
    for pid, names in found["other_env_names"].items():
        assert set(names) <= allowed_env_names, (pid, names)
    assert (found["uid"], found["euid"], found["gid"], found["egid"]) == (NOBODY,) * 4
    assert set(found["groups"]) <= {NOBODY}
    status = found["status"]
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[key], 16) == 0, f"{key} = {status[key]}"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # Docker's default seccomp filter is on
    assert found["pids"] <= 4, f"{found['pids']} processes visible: the pid namespace leaks"
    assert found["hostname"] == "sandbox"
    assert_contained(outcome, limit_s=LIMIT_S)


def test_probe_can_write_only_to_tmp_and_finds_no_socket_or_dataset(sandbox_run, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    (data / "test_x.npy").write_bytes(b"inputs only")
    outcome = sandbox_run("probe_fs", timeout_s=LIMIT_S, data_dir=data)

    found = outcome.probe()
    writes = found["writes"]
    assert writes.pop("/tmp") == "ok"
    assert writes.pop("/dev/shm") in REFUSED | {"ok"}  # Docker's private 64 MB shm, capped
    refused_everywhere = {path: err for path, err in writes.items() if err not in REFUSED}
    assert refused_everywhere == {}, f"writable or oddly failing: {refused_everywhere}"
    assert found["docker_sockets"] == []
    assert set(found["sockets"]) <= {"/job/worker.sock"}, found["sockets"]
    assert found["dataset_files_count"] == 0, found["dataset_files"]
    assert found["sklearn"] is False
    assert_contained(outcome, limit_s=LIMIT_S)


def _assert_only_loopback(found: dict) -> None:
    assert found["if_nameindex"] == ["lo"]
    assert found["proc_net_dev"] in (["lo"], [])  # gVisor may not list lo in /proc/net/dev
    for attempt in ("dns", "route_public", "route_docker_host"):
        assert found[attempt]["result"].startswith("error:"), (attempt, found[attempt])
        assert found[attempt]["seconds"] < 1.0, f"{attempt} took {found[attempt]['seconds']} s to fail"


def test_probe_has_only_loopback_and_no_route_out(sandbox_run):
    outcome = sandbox_run("probe_net", timeout_s=LIMIT_S)

    found = outcome.probe()
    _assert_only_loopback(found)
    assert found["proc_net_dev"] == ["lo"] and found["routes"] == []
    assert_contained(outcome, limit_s=LIMIT_S)


def test_gvisor_runs_a_good_model_to_pass(sandbox_run):
    outcome = sandbox_run("control_mlp", timeout_s=GVISOR_LIMIT_S, runtime="runsc")

    assert outcome.watch.host_config.get("Runtime") == "runsc"
    assert outcome.kind == "passed", f"{outcome.result.failure}; logs:\n{outcome.result.logs[-800:]}"
    assert outcome.result.check is not None and outcome.result.check.output_shape == (2, 10)
    assert_contained(outcome, limit_s=GVISOR_LIMIT_S)


def test_gvisor_probe_sees_only_loopback(sandbox_run):
    outcome = sandbox_run("probe_net", timeout_s=GVISOR_LIMIT_S, runtime="runsc")

    assert outcome.watch.host_config.get("Runtime") == "runsc"
    _assert_only_loopback(outcome.probe())
    assert_contained(outcome, limit_s=GVISOR_LIMIT_S)
