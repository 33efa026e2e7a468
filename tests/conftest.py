"""Shared fixtures. Docker tests fail - never skip - when the engine or the image is missing."""

import os
import signal

import pytest

# Ryuk, testcontainers' reaper, is an image from a registry, which air-gapped hosts cannot pull.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

# A non-interactive shell starts background jobs with SIGINT ignored (`CI=true bash .ci/run &`),
# children inherit "ignored" across exec, and Python then leaves Ctrl-C off, as it should for a
# `nohup researcher run &`. The tests that interrupt a `researcher` subprocess with SIGINT need
# it delivered: a handled signal is reset to the default in a child, so handle it here.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def docker_client():
    """A Docker client with the current sandbox image, or a failure saying how to get one."""
    from orchestrator.exceptions import SandboxUnavailable
    from orchestrator.sandbox.image import check_image
    from orchestrator.sandbox.docker import connect

    try:
        client = connect()
        check_image(client)
    except SandboxUnavailable as exc:
        pytest.fail(f"Docker tests need an engine and the sandbox image (run scripts/setup.sh): {exc}")
    yield client
    client.close()


@pytest.fixture
def docker_backend(docker_client):
    """A Docker backend; asserts that no sandbox container of this process outlives the test."""
    from orchestrator.sandbox.docker import DockerBackend

    backend = DockerBackend(docker_client)
    yield backend
    left = backend.containers()
    backend.close()
    assert not left, f"sandbox containers left behind: {[c.name for c in left]}"
