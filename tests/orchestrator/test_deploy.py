"""The orchestrator's image: its build context and the wheels it needs beyond the base (no Docker)."""

import pytest

from orchestrator.deploy import DOCKERFILE, context_files, installed_closure, project_requirements, wheel_pins
from orchestrator.exceptions import SandboxUnavailable
from orchestrator.sandbox.image import content_hash, project_root
from sandbox_image.builder import default_spec

ROOT = project_root()


def test_the_context_is_the_project_without_host_only_code_or_caches():
    files = context_files(ROOT)
    assert files[:3] == [DOCKERFILE, "pyproject.toml", "README.md"]
    assert {"orchestrator/cli.py", "orchestrator/planning/space.py", "evaluator/metrics.py",
            "sandbox_image/protocol.py"} <= set(files)
    assert "sandbox_image/builder.py" not in files  # host-only: debootstrap and chroot
    assert not any("__pycache__" in f or f.startswith(("tests/", ".venv")) for f in files)


def test_a_checkout_without_the_dockerfile_says_so(tmp_path):
    with pytest.raises(SandboxUnavailable, match="orchestrator/Dockerfile.*source checkout"):
        context_files(tmp_path)


def test_the_closure_follows_markers_and_extras_of_what_is_installed():
    closure = installed_closure(["httpx>=0.27"])
    assert {"httpx", "httpcore", "h11", "anyio", "idna", "certifi"} <= set(closure)
    assert "brotli" not in closure  # only under httpx's [brotli] extra
    assert "pytest" not in installed_closure(['pytest>=8; python_version < "3"'])
    with pytest.raises(SandboxUnavailable, match="not installed in .*scripts/setup.sh"):
        installed_closure(["no-such-distribution-here==1.0"])


def test_the_wheels_are_what_the_project_needs_beyond_the_base_pinned_to_this_venv():
    pins = wheel_pins(ROOT, default_spec().requirements)
    names = {p.split("==")[0] for p in pins}
    assert {"docker", "httpx", "optuna", "scikit-learn", "matplotlib", "torchmetrics", "rich"} <= names
    assert not names & {"torch", "torchvision", "numpy", "msgspec", "pyzmq", "pillow", "nvidia-cublas"}
    assert all("==" in p for p in pins) and list(pins) == sorted(pins)
    assert len(project_requirements(ROOT)) >= 10


def test_the_image_hash_follows_the_pins():
    files = context_files(ROOT)
    one = content_hash(ROOT, files, "base", {"wheels": "a==1"})
    assert one == content_hash(ROOT, files, "base", {"wheels": "a==1"}) != content_hash(ROOT, files, "base", {"wheels": "a==2"})
