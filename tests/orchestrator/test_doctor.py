"""`researcher doctor` tells what is there and what is missing, with the fix."""

import gc
import io

import pytest

from orchestrator.doctor import diagnose, print_table
from sandbox_image.protocol import PROTOCOL_VERSION


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # docker-py leaks a socket on failure
def test_without_an_engine_the_engine_and_image_are_missing_with_fixes(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    findings = {f.check: f for f in diagnose(image="pytorch-researcher-sandbox:latest")}
    assert not findings["docker engine"].ok and "scripts/setup.sh" in findings["docker engine"].fix
    assert not findings["sandbox image"].ok
    assert findings["dataset digits"].ok and findings["dataset fashion_mnist"].ok
    out = io.StringIO()
    assert print_table(list(findings.values()), out) == 3
    assert "not ready: docker engine, sandbox image" in out.getvalue()
    gc.collect()


@pytest.mark.docker
def test_with_the_engine_and_image_the_host_is_ready(docker_client):
    findings = {f.check: f for f in diagnose(image="pytorch-researcher-sandbox:latest")}
    assert findings["docker engine"].ok and findings["sandbox image"].ok
    assert f"protocol {PROTOCOL_VERSION}" in findings["sandbox image"].detail
    assert print_table(list(findings.values()), io.StringIO()) == 0


@pytest.mark.docker
def test_the_orchestrator_image_is_optional_and_named_with_its_build_command(docker_client):
    from orchestrator.doctor import check_orchestrator_image

    class NoImages:
        class images:  # noqa: N801 - mimics docker-py's client.images
            @staticmethod
            def get(tag):
                import docker.errors

                raise docker.errors.ImageNotFound(f"no such image: {tag}")

    missing = check_orchestrator_image(NoImages())
    assert not missing.ok and not missing.required
    assert "pytorch-researcher:latest not built" in missing.detail and missing.fix == "researcher image build --orchestrator"
    present = check_orchestrator_image(docker_client)  # scripts/setup.sh builds it
    assert present.ok and f"protocol {PROTOCOL_VERSION}" in present.detail


@pytest.mark.parametrize(("free_gb", "image_built", "ok", "fix"), [
    (9, True, True, ""),  # the image is built: runs need little
    (1, True, False, "free at least 2 GB for runs"),
    (9, False, False, "free at least 10 GB to build the sandbox image (about 6 GB) and hold runs"),
    (12, False, True, ""),
])
def test_the_free_disk_needed_depends_on_whether_the_image_is_still_to_build(monkeypatch, tmp_path, free_gb,
                                                                            image_built, ok, fix):
    import shutil

    from orchestrator.doctor import check_disk

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100e9, 100e9 - free_gb * 1e9,
                                                                                     free_gb * 1e9))
    finding = check_disk(tmp_path, image_built=image_built)
    assert finding.ok is ok and finding.detail == f"{free_gb} GB free at {tmp_path}"
    assert (finding.fix if not ok else "") == fix
