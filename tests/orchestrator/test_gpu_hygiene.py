"""A cpu sandbox sees no GPU even where the engine's default runtime is NVIDIA's.

With ``"default-runtime": "nvidia"`` in daemon.json, a container that names no
runtime runs under nvidia-container-runtime, which exposes whatever
``NVIDIA_VISIBLE_DEVICES`` says, and CUDA base images set it to ``all``. So
every container names its runtime and a cpu one sets the variable to ``void``;
the testcontainers API builds the same settings and checks them on the started
container.
"""

from pathlib import Path

import pytest

from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.docker import container_kwargs


def _kwargs(**config):
    return container_kwargs("abc123", Path("/tmp/job"), None, SandboxConfig(**config))


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_a_cpu_sandbox_names_its_runtime_and_hides_every_gpu(runtime):
    kw = _kwargs(container_runtime=runtime)
    assert kw["runtime"] == runtime  # never the engine's default
    assert kw["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "device_requests" not in kw


@pytest.mark.parametrize("gpu", [None, "1", "GPU-3f1c2a7e-0000-0000-0000-000000000000"])
def test_a_cuda_sandbox_gets_its_one_gpu_from_the_device_request_alone(gpu):
    kw = _kwargs(device="cuda", gpu=gpu)
    assert kw["runtime"] == "runc"  # Docker's own NVIDIA hook serves the device request under runc
    assert "NVIDIA_VISIBLE_DEVICES" not in kw["environment"]  # the engine sets it from the request
    [request] = kw["device_requests"]
    assert request["DeviceIDs"] == ([gpu] if gpu else []) and request["Count"] == (0 if gpu else 1)


def test_the_testcontainers_api_checks_runtime_and_environment_on_the_started_container():
    from orchestrator.testing import hardening_problems

    settings = _kwargs()
    attrs = _inspect(settings)
    assert hardening_problems(attrs, settings) == []

    attrs["HostConfig"]["Runtime"] = "nvidia"  # the engine ran it under its default after all
    attrs["Config"]["Env"] = [e for e in attrs["Config"]["Env"] if not e.startswith("NVIDIA_")] + [
        "NVIDIA_VISIBLE_DEVICES=all"]  # as a CUDA base image sets it
    problems = hardening_problems(attrs, settings)
    assert any(p.startswith("runtime is 'nvidia', not 'runc'") for p in problems), problems
    assert any(p.startswith("environment is") and "'NVIDIA_VISIBLE_DEVICES': 'all'" in p for p in problems), problems


def test_the_testcontainers_container_hands_docker_the_same_runtime_and_environment(tmp_path):
    from orchestrator.testing import SandboxContainer

    container = SandboxContainer("abc123", tmp_path, None, SandboxConfig())
    try:
        assert container._kwargs["runtime"] == "runc"
        assert container.env["NVIDIA_VISIBLE_DEVICES"] == "void"
    finally:
        container.get_docker_client().client.close()


def _inspect(settings: dict) -> dict:
    """What ``docker inspect`` reports for a container started with ``settings``."""
    return {
        "HostConfig": {
            "NetworkMode": settings["network_mode"], "ReadonlyRootfs": True, "CapDrop": settings["cap_drop"],
            "SecurityOpt": settings["security_opt"], "PidsLimit": settings["pids_limit"],
            "Runtime": settings["runtime"],
        },
        "Config": {
            "User": settings["user"],
            "Env": ["PATH=/usr/bin"]
            + [f"{k}={v}" for k, v in settings["environment"].items()],
        },
        "Mounts": [{"Destination": "/job", "RW": False}],
    }


@pytest.mark.docker
def test_a_started_cpu_container_runs_under_runc_with_no_gpu(docker_backend, tmp_path):
    """The engine keeps both settings (inspect), whatever its default runtime."""
    sandbox = docker_backend.create("gpuhygiene", tmp_path, None, SandboxConfig())
    try:
        sandbox.start()
        info = sandbox._container.client.api.inspect_container(sandbox._container.id)
    finally:
        sandbox.close()
    assert info["HostConfig"]["Runtime"] == "runc"
    env = info["Config"]["Env"]
    assert "NVIDIA_VISIBLE_DEVICES=void" in env and "NVIDIA_VISIBLE_DEVICES=all" not in env
    assert not info["HostConfig"].get("DeviceRequests")
