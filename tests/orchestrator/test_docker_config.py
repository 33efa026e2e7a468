"""The hardening of every job container, checked on the arguments we hand Docker."""

import os
import tempfile
from pathlib import Path

import pytest

from orchestrator.exceptions import UsageError
from orchestrator.sandbox.config import SandboxConfig, validate
from orchestrator.sandbox.docker import LABEL_OWNER, LABEL_ROLE, container_kwargs, owner_id


def _kwargs(**config):
    return container_kwargs("abc123", Path("/tmp/job"), Path("/tmp/data"), SandboxConfig(**config))


def test_every_hardening_setting_is_on_by_default():
    kw = _kwargs()
    assert kw["network_mode"] == "none"
    assert kw["read_only"] is True
    assert kw["cap_drop"] == ["ALL"]
    assert kw["security_opt"] == ["no-new-privileges:true"]
    assert kw["user"] == "65534:65534"
    assert kw["init"] is True
    assert kw["pids_limit"] == 256
    assert kw["mem_limit"] == kw["memswap_limit"] == "2g"
    assert kw["nano_cpus"] == 1_000_000_000
    assert "size=256m" in kw["tmpfs"]["/tmp"] and "noexec" in kw["tmpfs"]["/tmp"]
    assert {u["Name"]: u["Hard"] for u in kw["ulimits"]} == {"nofile": 1024, "core": 0}
    assert kw["log_config"]["Config"] == {"max-size": "1m", "max-file": "1"}
    assert kw["runtime"] == "runc" and "device_requests" not in kw  # named: the default may be nvidia's


def test_only_the_job_socket_and_data_are_mounted_read_only_and_no_docker_socket():
    kw = _kwargs()
    assert kw["volumes"] == {"/tmp/job": {"bind": "/job", "mode": "ro"}, "/tmp/data": {"bind": "/data", "mode": "ro"}}
    assert not any("docker.sock" in path for path in kw["volumes"])


def test_environment_is_ours_alone_and_threads_follow_the_cpu_cap(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    kw = _kwargs(cpus=2.5)
    assert kw["environment"]["OMP_NUM_THREADS"] == "2"
    assert set(kw["environment"]) == {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHONHASHSEED",
                                      "NVIDIA_VISIBLE_DEVICES"}
    assert "sk-must-not-leak" not in repr(kw)


def test_labels_identify_role_job_and_owner():
    kw = _kwargs()
    assert kw["labels"][LABEL_ROLE] == "sandbox"
    assert kw["labels"][LABEL_OWNER] == owner_id()
    assert kw["name"] == "researcher-abc123"


def test_gvisor_and_gpu_options():
    assert _kwargs(container_runtime="runsc")["runtime"] == "runsc"
    request = _kwargs(device="cuda")["device_requests"][0]
    assert request["Count"] == 1 and request["Capabilities"] == [["gpu"]]
    pinned = _kwargs(device="cuda", gpu="1")["device_requests"][0]
    assert pinned["DeviceIDs"] == ["1"]


def test_bad_limits_are_reported_together():
    with pytest.raises(UsageError) as err:
        validate(SandboxConfig(memory="lots", cpus=0, container_runtime="kata", timeout_s=-1))
    text = str(err.value)
    for word in ("--memory", "--cpus", "--runtime", "--timeout"):
        assert word in text


def test_relative_paths_are_mounted_as_absolute_bind_mounts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kw = container_kwargs("abc", Path("runs/job"), Path("runs/run_x/scratch/data"), SandboxConfig())
    assert set(kw["volumes"]) == {str(tmp_path / "runs/job"), str(tmp_path / "runs/run_x/scratch/data")}


def test_pool_slots_warm_up_before_ready_and_cold_jobs_do_not():
    assert _kwargs()["command"] == ["/job/worker.sock"]
    assert _kwargs(warm_up=True)["command"] == ["--warm-up", "/job/worker.sock"]


def test_a_jobs_dir_whose_sockets_would_not_fit_sun_path_is_refused():
    from orchestrator.sandbox.config import JOB_SOCKET_TAIL, MAX_SOCKET_PATH

    longest = "/" + "j" * (MAX_SOCKET_PATH - len(JOB_SOCKET_TAIL) - 1)
    assert validate(SandboxConfig(jobs_dir=longest)).jobs_root == longest
    with pytest.raises(UsageError, match=r"--jobs-dir .* too long for a unix socket.* 108 bytes, the limit is 107"):
        validate(SandboxConfig(jobs_dir=longest + "j"))
    assert SandboxConfig().jobs_root == os.path.join(tempfile.gettempdir(), f"researcher-jobs-{os.geteuid()}")


def test_a_pool_slot_waits_at_a_low_cpu_weight_and_a_job_container_at_the_default():
    from orchestrator.sandbox.config import STANDBY_CPU_SHARES

    assert _kwargs(warm_up=True)["cpu_shares"] == STANDBY_CPU_SHARES
    assert "cpu_shares" not in _kwargs()  # a cold job container: Docker's default weight
    assert "cpu_shares" not in _kwargs(warm_up=True, container_runtime="runsc")  # runsc cannot raise it again later
