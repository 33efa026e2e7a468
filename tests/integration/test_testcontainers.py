"""orchestrator.testing through real containers: the README's snippet, the hardening, the clean-up."""

import gc
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.exceptions import SandboxUnavailable
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.docker import LABEL_OWNER, LABEL_ROLE, ROLE_SANDBOX, DockerBackend, owner_id
from orchestrator.sandbox.runner import Slot, execute, new_job_id
from orchestrator.testing import SandboxBackend, SandboxContainer, check_model
from sandbox_image.protocol import FailureKind, Job

ROOT = Path(__file__).resolve().parents[2]
SNIPPET_MARK = "<!-- snippet: tests/integration/test_testcontainers.py -->"
pytestmark = pytest.mark.docker


def readme_snippet() -> str:
    """The Python block that follows the snippet mark in README.md."""
    text = (ROOT / "README.md").read_text()
    assert SNIPPET_MARK in text, "README.md lost the testcontainers snippet's mark"
    found = re.search(r"```python\n(.*?)```", text[text.index(SNIPPET_MARK):], re.DOTALL)
    assert found, "no ```python block after the snippet mark in README.md"
    return found.group(1)


def sandboxes_of(client, owner: str) -> list[str]:
    """Names of the sandbox containers (any state) that ``owner`` made."""
    found = client.containers.list(all=True, ignore_removed=True, filters={"label": [f"{LABEL_ROLE}={ROLE_SANDBOX}", f"{LABEL_OWNER}={owner}"]})
    return [c.name for c in found]


def test_the_readme_snippet_passes_as_a_users_own_pytest_suite(docker_client, tmp_path):
    snippet = readme_snippet()
    tests = re.findall(r"^def (test_\w+)", snippet, re.MULTILINE)
    assert len(tests) >= 2, tests
    (tmp_path / "test_my_models.py").write_text(snippet)
    env = {**os.environ, "TESTCONTAINERS_RYUK_DISABLED": "true"}
    # A user's suite: its own directory and rootdir, run from the checkout that holds examples/,
    # as strict as ours (every warning an error: an unclosed socket or container client fails it).
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         str(tmp_path / "test_my_models.py")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()  # its sandbox, if any, is then an orphan that the next DockerBackend reaps
        out, _ = proc.communicate()
    assert proc.returncode == 0, out[-4000:]
    assert f"{len(tests)} passed" in out, out[-4000:]
    assert sandboxes_of(docker_client, f"{socket.gethostname()}:{proc.pid}") == []


def test_a_sandbox_container_has_exactly_the_products_hardening(docker_client):
    config = SandboxConfig(startup_timeout_s=60.0)
    with Slot(DockerBackend(docker_client), config) as slot:  # the product's container, for comparison
        slot.start()
        slot.wait_ready()
        ours = docker_client.api.inspect_container(f"researcher-{slot.id}")
    backend = SandboxBackend()
    try:
        with Slot(backend, config) as slot:
            slot.start()
            slot.wait_ready()
            theirs = docker_client.api.inspect_container(slot.sandbox.get_container_id())
            source = (ROOT / "examples" / "digits_cnn.py").read_text()
            result = execute(slot, Job(job_id=slot.id, source=source, class_name="Net", input_shape=(1, 8, 8),
                                       num_classes=10))
    finally:
        backend.close()
    assert result.status == "passed", result.failure
    assert result.check.output_shape == (2, 10)
    host = theirs["HostConfig"]
    assert host["NetworkMode"] == "none" and list(theirs["NetworkSettings"]["Networks"]) == ["none"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert theirs["Config"]["User"] == "65534:65534" and host["Privileged"] is False
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Memory"] == host["MemorySwap"] == 2 * 1024**3 and host["PidsLimit"] == 256
    assert "noexec" in host["Tmpfs"]["/tmp"] and "size=256m" in host["Tmpfs"]["/tmp"]
    assert all(not m["RW"] for m in theirs["Mounts"]), theirs["Mounts"]
    assert not any("docker.sock" in m["Source"] for m in theirs["Mounts"])
    # Identical to the product's container but for the job's own socket directory and labels.
    assert {k: v for k, v in host.items() if k != "Binds"} == {k: v for k, v in ours["HostConfig"].items() if k != "Binds"}
    assert {k: v for k, v in theirs["Config"].items() if k != "Labels"} == {
        k: v for k, v in ours["Config"].items() if k != "Labels"}
    assert theirs["Config"]["Labels"]["org.testcontainers"] == "true"
    assert theirs["Config"]["Labels"][LABEL_OWNER] == owner_id()
    assert sandboxes_of(docker_client, owner_id()) == []


def test_a_model_that_writes_outside_tmp_is_a_recorded_failure_not_an_exception(docker_client, tmp_path):
    model = tmp_path / "persist.py"
    model.write_text(
        "from torch import nn\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        with open('/opt/researcher/backdoor.py', 'w') as f:\n"
        "            f.write('pwned')\n"
    )
    outcome = check_model(model, input_shape=(1, 8, 8), num_classes=10)
    failure = outcome.result.failure
    assert failure is not None and failure.kind is FailureKind.INSTANTIATE_ERROR
    assert "Read-only file system" in failure.message, failure.message
    assert outcome.exit_code == 1
    assert sandboxes_of(docker_client, owner_id()) == []


def test_a_syntax_error_is_reported_without_a_container(tmp_path):
    model = tmp_path / "broken.py"
    model.write_text("class Net(:\n")
    outcome = check_model(model, input_shape=(1, 8, 8), num_classes=10)
    assert outcome.result.failure.kind is FailureKind.SYNTAX_ERROR and outcome.result.ready is None


# docker-py's UnixHTTPConnection does not close its socket when connect() fails.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_no_engine_is_sandbox_unavailable_saying_how_to_get_one(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SandboxUnavailable, match="no Docker engine answers"):
        check_model(ROOT / "examples" / "digits_cnn.py", input_shape=(1, 8, 8), num_classes=10)
    gc.collect()  # collect docker-py's leaked socket while the filter above applies


def test_a_ryuk_that_cannot_be_pulled_says_to_disable_it(docker_client, monkeypatch):
    from testcontainers.core.config import testcontainers_config

    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", False)
    monkeypatch.setattr(testcontainers_config, "ryuk_image", "researcher-test-no-such-ryuk:0")  # never pullable
    with pytest.raises(SandboxUnavailable, match="TESTCONTAINERS_RYUK_DISABLED=true"):
        check_model(ROOT / "examples" / "digits_cnn.py", input_shape=(1, 8, 8), num_classes=10)
    assert sandboxes_of(docker_client, owner_id()) == []


def test_a_container_that_is_not_hardened_as_asked_is_removed_before_any_job(docker_client, tmp_path):
    # What testcontainers does under Docker in Docker: join the container to a network.
    container = SandboxContainer(new_job_id(), tmp_path, None, SandboxConfig())
    container.with_kwargs(**{**container._kwargs, "network": "bridge"})
    with pytest.raises(SandboxUnavailable, match="not hardened as asked: network is 'bridge', not 'none'"):
        container.start()
    assert sandboxes_of(docker_client, owner_id()) == []
