"""Fixtures of the containment tests: a real engine, the real image, a watched run.

Every test here runs hostile code in a real hardened container. A missing engine
or image fails the tests (never skips them): under ``CI=true`` that is the rule,
and outside CI a silently skipped containment suite would prove nothing either.
The host-side watching lives in ``tests.sandbox.harness``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import docker
import docker.errors
import pytest

from orchestrator.exceptions import SandboxUnavailable
from orchestrator.sandbox.config import DEFAULT_IMAGE, SandboxConfig
from orchestrator.sandbox.docker import connect
from sandbox_image.protocol import IMAGE_PROTOCOL_LABEL, PROTOCOL_VERSION
from tests.sandbox.harness import Outcome, run_model

_RESULTS_KEY = pytest.StashKey[list]()


def _unavailable(reason: str) -> NoReturn:
    where = "CI=true: a containment test must fail, not skip" if os.environ.get("CI") == "true" else (
        "these tests never skip")
    pytest.fail(f"{reason} ({where}). Run scripts/setup.sh, which starts Docker and builds the image.",
                pytrace=False)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A live Docker client whose engine has the sandbox image at our protocol version."""
    try:
        client = connect(timeout=60)
    except SandboxUnavailable as exc:
        reason = f"no Docker engine: {exc}"
    else:
        reason = ""
    if reason:  # outside the except block: the report shows the reason, not a chain
        _unavailable(reason)
    try:
        image = client.images.get(DEFAULT_IMAGE)
    except docker.errors.ImageNotFound:
        image = None
    if image is None:
        client.close()
        _unavailable(f"the sandbox image {DEFAULT_IMAGE} is not built")
    label = (image.labels or {}).get(IMAGE_PROTOCOL_LABEL)
    if label != str(PROTOCOL_VERSION):
        client.close()
        _unavailable(f"the sandbox image speaks protocol {label!r}, the tests {PROTOCOL_VERSION}: rebuild it")
    yield client
    client.close()


@pytest.fixture(scope="session")
def image_env_names(docker_client: docker.DockerClient) -> set[str]:
    """Names of the environment variables baked into the sandbox image."""
    env = docker_client.images.get(DEFAULT_IMAGE).attrs["Config"].get("Env") or []
    return {item.split("=", 1)[0] for item in env}


@pytest.fixture
def sandbox_run(docker_client: docker.DockerClient, request: pytest.FixtureRequest) -> Callable[..., Outcome]:
    """Run a hostile model by name: ``sandbox_run("spin_forward", timeout_s=8)``."""

    def run(model: str, *, timeout_s: float = 60.0, memory: str = "512m", runtime: str = "runc",
            data_dir: Path | None = None) -> Outcome:
        config = SandboxConfig(timeout_s=timeout_s, memory=memory, container_runtime=runtime, startup_timeout_s=60.0)
        outcome = run_model(docker_client, model, config, data_dir)
        request.config.stash.setdefault(_RESULTS_KEY, []).append(
            (model + (f" [{runtime}]" if runtime != "runc" else ""), outcome.kind, outcome.result.startup_seconds,
             outcome.job_s, timeout_s))
        return outcome

    return run


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the model -> outcome table of this session's sandbox runs."""
    rows = config.stash.get(_RESULTS_KEY, [])
    if not rows:
        return
    terminalreporter.section("hostile models: outcome per model")
    terminalreporter.write_line(f"{'model':<28} {'outcome':<20} {'startup':>8} {'job':>7}  limit")
    for model, kind, startup, job, limit in rows:
        terminalreporter.write_line(f"{model:<28} {kind:<20} {startup:7.1f}s {job:6.1f}s  {limit:g}s")
