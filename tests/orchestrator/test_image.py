"""The sandbox image's identity: content hash, tags, and the stale-image message."""

import docker.errors
import pytest

from orchestrator.exceptions import SandboxUnavailable
from orchestrator.sandbox.image import check_image, content_hash, context_files, project_root, split_tag
from sandbox_image.protocol import IMAGE_PROTOCOL_LABEL, PROTOCOL_VERSION


class FakeImage:
    def __init__(self, labels):
        self.labels, self.id, self.attrs = labels, "sha256:abc", {"Size": 1, "Created": "now"}


class FakeClient:
    def __init__(self, image=None):
        self.images = self
        self._image = image

    def get(self, tag):
        if self._image is None:
            raise docker.errors.ImageNotFound("no such image")
        return self._image


def test_a_missing_image_says_how_to_build_it():
    with pytest.raises(SandboxUnavailable, match="researcher image build"):
        check_image(FakeClient(None), "img:latest")


def test_a_stale_image_names_both_protocols_and_the_fix():
    stale = FakeImage({IMAGE_PROTOCOL_LABEL: str(PROTOCOL_VERSION + 1)})
    with pytest.raises(SandboxUnavailable) as err:
        check_image(FakeClient(stale), "img:latest")
    assert f"protocol {PROTOCOL_VERSION + 1}" in str(err.value) and "rebuild with `researcher image build`" in str(err.value)
    with pytest.raises(SandboxUnavailable, match="no known protocol"):
        check_image(FakeClient(FakeImage({})), "img:latest")


def test_a_current_image_passes():
    info = check_image(FakeClient(FakeImage({IMAGE_PROTOCOL_LABEL: str(PROTOCOL_VERSION)})), "img:latest")
    assert info.protocol == PROTOCOL_VERSION


def test_the_build_context_is_the_worker_only_and_its_hash_follows_content(tmp_path):
    files = context_files(project_root())
    assert files[0] == "Dockerfile.sandbox"
    assert "sandbox_image/worker.py" in files and "evaluator/recipe.py" in files
    assert not any(f.startswith(("orchestrator/", "tests/")) or f.endswith(("metrics.py", "datasets.py")) for f in files)
    root = project_root()
    one = content_hash(root, files, "base1", {"A": "1"})
    assert one == content_hash(root, files, "base1", {"A": "1"})
    assert one != content_hash(root, files, "base2", {"A": "1"}) != content_hash(root, files, "base1", {"A": "2"})


@pytest.mark.parametrize(("tag", "expected"), [
    ("img", ("img", "latest")), ("img:v1", ("img", "v1")), ("host:5000/img", ("host:5000/img", "latest")),
    ("host:5000/img:v2", ("host:5000/img", "v2")),
])
def test_split_tag(tag, expected):
    assert split_tag(tag) == expected


def test_compose_builds_the_image_for_the_current_protocol():
    import re

    text = (project_root() / "compose.yaml").read_text()
    assert re.search(r'PROTOCOL_VERSION: "(\d+)"', text).group(1) == str(PROTOCOL_VERSION)
    assert "dockerfile: Dockerfile.sandbox" in text


def test_the_image_context_holds_every_project_module_the_worker_imports():
    """The image copies only the worker's modules: one the worker imports but the image lacks
    fails every training job (as evaluator/augment.py did once) - catch that without Docker."""
    import ast

    from orchestrator.sandbox.image import HOST_ONLY_MODULES

    root = project_root()
    shipped = set(context_files(root))
    todo, seen = ["sandbox_image/worker.py"], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse((root / path).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                if name.split(".")[0] in ("evaluator", "sandbox_image", "orchestrator"):
                    module = name.replace(".", "/") + ".py"
                    assert not module.startswith("orchestrator/"), f"{path} imports host-only {name}"
                    assert module in shipped and module not in HOST_ONLY_MODULES, \
                        f"{path} imports {name}, which the sandbox image does not contain"
                    todo.append(module)
    assert {"evaluator/recipe.py", "evaluator/augment.py", "sandbox_image/protocol.py"} <= seen
