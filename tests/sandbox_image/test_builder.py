"""The offline base-image builder: hashing, pins, command construction, caching (no Docker)."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

import docker.errors
import pytest

from sandbox_image import builder
from sandbox_image.builder import BaseImageError, BaseSpec

PINS = ("torch==2.14.1", "numpy==2.4.6")


def test_content_hash_is_stable_and_ignores_pin_order() -> None:
    a = BaseSpec(requirements=PINS)
    b = BaseSpec(requirements=tuple(reversed(PINS)))
    assert a.content_hash() == b.content_hash()
    assert len(a.content_hash()) == 16
    assert a.tag == f"pytorch-researcher-base:{a.content_hash()}"


@pytest.mark.parametrize(
    "changed",
    [
        BaseSpec(requirements=("torch==2.14.0", "numpy==2.4.6")),
        BaseSpec(requirements=PINS, suite="trixie"),
        BaseSpec(requirements=PINS, apt_packages=("python3",)),
        BaseSpec(requirements=PINS, builder_version=builder.BUILDER_VERSION + 1),
    ],
)
def test_content_hash_changes_with_every_input(changed: BaseSpec) -> None:
    assert changed.content_hash() != BaseSpec(requirements=PINS).content_hash()


def test_parse_requirements_keeps_pins_and_drops_comments() -> None:
    text = "# header\ntorch==2.14.1  # the CUDA build\n\nnumpy==2.4.6\n"
    assert builder.parse_requirements(text) == PINS


def test_parse_requirements_rejects_ranges_with_line_numbers() -> None:
    with pytest.raises(BaseImageError, match=r"line 2: 'numpy>=2'"):
        builder.parse_requirements("torch==2.14.1\nnumpy>=2\n", "reqs.txt")


def test_parse_requirements_rejects_an_empty_list() -> None:
    with pytest.raises(BaseImageError, match="no packages"):
        builder.parse_requirements("# nothing\n")


def test_shipped_pins_have_torch_and_no_label_bearing_packages() -> None:
    pins = {p.split("==")[0].lower(): p.split("==")[1] for p in builder.default_spec().requirements}
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert {"msgspec", "pyzmq", "numpy"} <= pins.keys()
    # Datasets ship inside these: they must never be importable in the sandbox.
    assert not {"scikit-learn", "sklearn", "torchmetrics"} & pins.keys()


def test_target_platforms_cover_every_glibc_of_debian_12() -> None:
    platforms = builder.target_platforms()
    assert platforms[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_18_x86_64" in platforms and "manylinux_2_17_x86_64" in platforms
    assert "manylinux_2_16_x86_64" not in platforms
    assert platforms[-3:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def test_pip_download_targets_the_image_python_not_the_host(tmp_path: Path) -> None:
    argv = builder.pip_download_command("/venv/bin/python", tmp_path / "wh", tmp_path / "r.txt")
    assert argv[:4] == ["/venv/bin/python", "-m", "pip", "download"]
    assert "--only-binary=:all:" in argv
    assert argv[argv.index("--python-version") + 1] == "3.11"
    assert argv[argv.index("--dest") + 1] == str(tmp_path / "wh")
    assert argv[-2:] == ["--requirement", str(tmp_path / "r.txt")]
    platforms = [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"]
    assert platforms == builder.target_platforms()


def test_chroot_command_starts_from_an_empty_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "file:///host/only")
    argv = builder.chroot_command(Path("/r"), "apt-get", "update")
    assert argv[:2] == ["env", "-i"]
    assert argv[-4:] == ["chroot", "/r", "apt-get", "update"]
    assert not any("PIP" in a or "/host/only" in a for a in argv)


def test_chroot_steps_install_offline_without_recommends() -> None:
    steps = dict(builder.chroot_steps(BaseSpec(requirements=PINS)))
    install = steps["apt-get install python3 python3-venv"]
    assert "--no-install-recommends" in install and install[-2:] == ["python3", "python3-venv"]
    pip = steps["pip install wheels"]
    assert pip[0] == "/opt/venv/bin/python"
    assert "--no-index" in pip
    assert pip[pip.index("--find-links") + 1] == builder.WHEELHOUSE_IN_ROOT


def test_debootstrap_is_minbase_from_the_mirror(tmp_path: Path) -> None:
    argv = builder.debootstrap_command(BaseSpec(requirements=PINS), tmp_path)
    assert argv == ["debootstrap", "--variant=minbase", "bookworm", str(tmp_path), builder.DEBIAN_MIRROR]


def test_import_changes_put_the_venv_first_and_label_the_hash() -> None:
    spec = BaseSpec(requirements=PINS)
    changes = builder.import_changes(spec)
    assert "ENV PATH=/opt/venv/bin:" in changes[0]
    assert f"LABEL {builder.BASE_HASH_LABEL}={spec.content_hash()}" in changes


def test_cached_wheelhouse_runs_no_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = BaseSpec(requirements=PINS)
    house = tmp_path / "wheelhouse" / spec.content_hash()
    house.mkdir(parents=True)
    (house / ".complete").write_text("x")
    monkeypatch.setattr(builder, "_run", lambda argv: pytest.fail(f"ran {argv}"))
    assert builder.ensure_wheelhouse(spec, tmp_path, log=lambda _: None) == house


def test_wheelhouse_download_marks_complete_and_drops_stale_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = BaseSpec(requirements=PINS)
    stale = tmp_path / "wheelhouse" / "0000000000000000"
    stale.mkdir(parents=True)
    ran: list[list[str]] = []
    monkeypatch.setattr(builder, "_run", ran.append)
    house = builder.ensure_wheelhouse(spec, tmp_path, log=lambda _: None)
    expected = builder.pip_download_command(builder.sys.executable, house, house / "requirements.txt")
    assert ran == [expected]
    assert (house / "requirements.txt").read_text().split() == list(PINS)
    assert (house / ".complete").is_file()
    assert not stale.exists()


def test_run_failure_carries_the_output_tail() -> None:
    with pytest.raises(BaseImageError, match="exit 3:\nboom"):
        builder._run(["sh", "-c", "echo boom; exit 3"])


def test_link_tree_hard_links_files(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.whl").write_bytes(b"wheel")
    builder._link_tree(tmp_path / "src", tmp_path / "dst")
    assert os.path.samefile(tmp_path / "src" / "a.whl", tmp_path / "dst" / "a.whl")


def test_clean_rootfs_removes_caches_and_docs_only(tmp_path: Path) -> None:
    for name in ("usr/share/doc/python3/README", "var/lib/apt/lists/x_Packages", "tmp/wheelhouse/a.whl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/python3").write_text("x")
    builder._clean_rootfs(tmp_path)
    assert (tmp_path / "usr/bin/python3").is_file()
    assert list((tmp_path / "usr/share/doc").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []
    assert list((tmp_path / "var/lib/apt/lists").iterdir()) == []


def test_tar_chunks_stream_a_readable_tar(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hostname").write_text("sandbox\n")
    with tempfile.TemporaryFile() as errors:
        data = b"".join(builder._tar_chunks(tmp_path, errors, chunk=7))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("./etc/hostname")
        assert member is not None and member.read() == b"sandbox\n"


def test_tar_chunks_raise_when_tar_fails(tmp_path: Path) -> None:
    with tempfile.TemporaryFile() as errors, pytest.raises(BaseImageError, match="No such file"):
        b"".join(builder._tar_chunks(tmp_path / "missing", errors))


def test_check_host_requires_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder.os, "geteuid", lambda: 1000)
    with pytest.raises(BaseImageError, match="needs root.*--base-image"):
        builder.check_host()


class _Image:
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels


class _Images:
    def __init__(self, images: dict[str, _Image]) -> None:
        self._images = images

    def get(self, name: str) -> _Image:
        if name not in self._images:
            raise docker.errors.ImageNotFound(name)
        return self._images[name]


class _Client:
    def __init__(self, images: dict[str, _Image]) -> None:
        self.images = _Images(images)


def test_existing_base_is_reused_without_building(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = BaseSpec(requirements=PINS)
    client = _Client({spec.tag: _Image({builder.BASE_HASH_LABEL: spec.content_hash()})})
    monkeypatch.setattr(builder, "check_host", lambda: pytest.fail("tried to build"))
    lines: list[str] = []
    tag = builder.ensure_base_image(client, spec=spec, log=lines.append)  # type: ignore[arg-type]
    assert tag == spec.tag
    assert lines == [f"[base] {spec.tag}: up to date"]


def test_mislabelled_base_is_rebuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = BaseSpec(requirements=PINS)
    client = _Client({spec.tag: _Image({builder.BASE_HASH_LABEL: "other"})})

    def refuse() -> None:
        raise BaseImageError("would build")

    monkeypatch.setattr(builder, "check_host", refuse)
    with pytest.raises(BaseImageError, match="would build"):
        builder.ensure_base_image(client, spec=spec, log=lambda _: None)  # type: ignore[arg-type]
