"""The launcher's configuration and its files, without Docker: what it grants, copies and makes.

``paths.stage`` is what stands between a forged StageData and the host's files: it copies
regular files only, from below a data source, through no symbolic link at any component.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from orchestrator.exceptions import UsageError
from orchestrator.launcher import paths
from orchestrator.launcher.config import LauncherConfig, size_bytes, validate
from orchestrator.launcher.paths import Refusal
from tests.ci import needs_root, unavailable

GIB = 1024**3


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(("text", "expected"), [
    ("2g", 2 * GIB), ("512m", 512 * 1024**2), ("64k", 64 * 1024), ("1.5g", int(1.5 * GIB)),
    ("100", 100), ("10b", 10), ("4G", 4 * GIB), ("0", 0),
])
def test_size_bytes_reads_dockers_units(text, expected):
    assert size_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "g", "2gb", "-1g", "2t", "1e3g", "2 g", "0x10", "inf", "nan", " 4g", "2g\n"])
def test_size_bytes_refuses_anything_else(text):
    with pytest.raises(ValueError, match="is not a size"):
        size_bytes(text)


def test_a_sound_config_validates_unchanged():
    config = LauncherConfig(root="/tmp/rl-ok", data_sources=("/srv/runs",), max_memory="8g", max_cpus=2,
                            max_pids=64, max_time_s=60, max_sandboxes=1, runtimes=("runc", "runsc"), lease_s=2)
    assert validate(config) is config


@pytest.mark.parametrize(("fields", "says"), [
    ({"root": "relative/root"}, "must be an absolute path"),
    ({"root": "/tmp/" + "r" * 60}, "too long"),
    ({"data_sources": ("runs",)}, "--data-source 'runs' must be an absolute path"),
    ({"max_memory": "lots"}, "--max-memory"),
    ({"max_cpus": 0}, "--max-cpus"),
    ({"max_pids": 8}, "--max-pids >= 16"),
    ({"max_time_s": 0}, "--max-time"),
    ({"max_sandboxes": 0}, "--max-sandboxes >= 1"),
    ({"runtimes": ("kata",)}, "--runtimes 'kata'"),
    ({"runtimes": ()}, "--runtimes"),
    ({"lease_s": 1.0}, "--lease 1.0 must be >= 2"),
])
def test_validate_names_the_bad_flag(fields, says):
    with pytest.raises(UsageError, match=re.escape(says)):
        validate(LauncherConfig(**{"root": "/tmp/rl-x", **fields}))


def test_validate_lists_every_problem_at_once():
    with pytest.raises(UsageError) as err:
        validate(LauncherConfig(root="rel", max_memory="x", lease_s=0))
    assert "--root" in str(err.value) and "--max-memory" in str(err.value) and "--lease" in str(err.value)


@pytest.mark.parametrize(("gpus", "ids", "devices"), [
    ("none", (), ("cpu",)), ("", (), ("cpu",)), ("all", None, ("cpu", "cuda")),
    ("0, 1", ("0", "1"), ("cpu", "cuda")), ("GPU-abc", ("GPU-abc",), ("cpu", "cuda")),
])
def test_gpus_decide_which_devices_are_granted(gpus, ids, devices):
    config = LauncherConfig(gpus=gpus)
    assert config.gpu_ids == ids
    assert config.devices == devices


def test_the_address_is_the_socket_in_the_root():
    config = LauncherConfig(root="/tmp/rl-a")
    assert config.socket_path == "/tmp/rl-a/launcher.sock"
    assert config.address == "ipc:///tmp/rl-a/launcher.sock"


# ------------------------------------------------------------------ the root and job dirs


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_prepare_root_makes_it_0710_and_tightens_an_existing_one(tmp_path):
    root = paths.prepare_root(str(tmp_path / "a" / "root"), None)
    assert root.is_dir() and _mode(root) == 0o710
    root.chmod(0o777)
    assert paths.prepare_root(str(root), None) == root and _mode(root) == 0o710


def test_prepare_root_gives_the_root_to_the_client_group(tmp_path):
    needs_root("chown to another group needs root")
    root = paths.prepare_root(str(tmp_path / "root"), 4242)
    assert os.lstat(root).st_gid == 4242 and _mode(root) == 0o710


def test_prepare_root_refuses_a_symbolic_link(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    before = _mode(target)
    (tmp_path / "root").symlink_to(target)
    with pytest.raises(Refusal, match="must be a real directory"):
        paths.prepare_root(str(tmp_path / "root"), None)
    assert _mode(target) == before  # no chmod through the link
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    with pytest.raises(Refusal, match="must be a real directory"):
        paths.prepare_root(str(tmp_path / "dangling"), None)
    assert not (tmp_path / "missing").exists()


def test_prepare_root_refuses_a_file(tmp_path):
    (tmp_path / "root").write_text("")
    with pytest.raises(Refusal, match="must be a real directory"):
        paths.prepare_root(str(tmp_path / "root"), None)


def test_prepare_root_refuses_a_root_below_a_directory_others_can_change(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # world-writable, no sticky bit: anyone could swap the root
    with pytest.raises(Refusal, match="which others can change"):
        paths.prepare_root(str(shared / "root"), None)


def test_job_dirs_are_0771_and_unguessable(tmp_path):
    root = paths.prepare_root(str(tmp_path / "root"), None)
    made = [paths.make_job_dir(root, None) for _ in range(20)]
    assert len({p.name for p in made}) == 20
    for path in made:
        assert path.parent == root and _mode(path) == 0o771
        assert re.fullmatch(r"job-[0-9a-f]{24,}", path.name), path.name  # 96 bits or more
    paths.remove(made[0])
    assert not made[0].exists()


def test_remove_follows_no_link_out_of_a_job_dir(tmp_path):
    root = paths.prepare_root(str(tmp_path / "root"), None)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    job = paths.make_job_dir(root, None)
    (job / "link").symlink_to(outside)
    paths.remove(job)
    assert not job.exists() and (outside / "keep.txt").read_text() == "precious"


# ------------------------------------------------------------------ staging data


@pytest.fixture
def roots(tmp_path) -> tuple[Path, Path, Path]:
    """(a data source with a prepared dir ``run/data``, a launcher root, a dir outside both)."""
    source = tmp_path / "runs"
    data = source / "run" / "data"
    data.mkdir(parents=True)
    (data / "train_x.npy").write_bytes(b"x" * 1000)
    (data / "train_y.npy").write_bytes(b"y" * 24)
    root = paths.prepare_root(str(tmp_path / "root"), None)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    return source, root, outside


def _staged(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("data-"))


def test_stage_copies_the_regular_files(roots):
    source, root, _ = roots
    dest, files, total = paths.stage(str(source / "run" / "data"), (str(source),), root, 10_000)
    assert (files, total) == (2, 1024)
    assert dest.parent == root and re.fullmatch(r"data-[0-9a-f]{24,}", dest.name)
    assert _mode(dest) == 0o755
    assert sorted(p.name for p in dest.iterdir()) == ["train_x.npy", "train_y.npy"]
    assert (dest / "train_x.npy").read_bytes() == b"x" * 1000
    assert not (dest / "train_x.npy").is_symlink()
    assert os.stat(dest / "train_x.npy").st_ino != os.stat(source / "run" / "data" / "train_x.npy").st_ino
    # a copy: changing the source afterwards changes nothing the sandbox sees
    (source / "run" / "data" / "train_x.npy").write_bytes(b"changed")
    assert (dest / "train_x.npy").read_bytes() == b"x" * 1000


def test_stage_takes_a_trailing_slash_and_dot_segments_inside_the_source(roots):
    source, root, _ = roots
    dest, files, _ = paths.stage(f"{source}/run/./data/", (str(source) + "/",), root, 10_000)
    assert files == 2 and dest.is_dir()


@pytest.mark.parametrize("where", ["outside", "dotdot", "sibling", "relative", "root_of_fs"])
def test_stage_refuses_a_source_outside_the_data_sources(roots, where):
    source, root, outside = roots
    sibling = source.parent / (source.name + "-evil")  # shares the prefix "runs"
    sibling.mkdir()
    (sibling / "f").write_text("x")
    path = {"outside": str(outside), "dotdot": f"{source}/run/../../outside", "sibling": str(sibling),
            "relative": "runs/run/data", "root_of_fs": "/"}[where]
    with pytest.raises(Refusal, match="outside the launcher's data sources|not an absolute path"):
        paths.stage(path, (str(source),), root, 10_000)
    assert _staged(root) == []


def test_stage_with_no_data_sources_says_how_to_give_one(roots):
    source, root, _ = roots
    with pytest.raises(Refusal, match="--data-source"):
        paths.stage(str(source / "run" / "data"), (), root, 10_000)


def test_stage_refuses_a_symlinked_component_escaping_the_source(roots):
    source, root, outside = roots
    (source / "escape").symlink_to(outside)  # inside the data source, pointing out of it
    with pytest.raises(Refusal, match="'escape'.*symbolic link"):
        paths.stage(str(source / "escape"), (str(source),), root, 10_000)
    (source / "run" / "hop").symlink_to(outside)
    with pytest.raises(Refusal, match="'hop'.*symbolic link"):
        paths.stage(str(source / "run" / "hop"), (str(source),), root, 10_000)
    assert _staged(root) == []


def test_stage_refuses_a_symlinked_component_even_inside_the_source(roots):
    source, root, _ = roots
    (source / "alias").symlink_to(source / "run")
    with pytest.raises(Refusal, match="'alias'.*symbolic link"):
        paths.stage(str(source / "alias" / "data"), (str(source),), root, 10_000)


def test_stage_refuses_a_data_source_root_that_is_a_link(roots, tmp_path):
    source, root, _ = roots
    (tmp_path / "linked-runs").symlink_to(source)
    with pytest.raises(Refusal, match="cannot open the data source root"):
        paths.stage(str(tmp_path / "linked-runs" / "run" / "data"), (str(tmp_path / "linked-runs"),), root, 10_000)


def test_stage_refuses_a_symlinked_file(roots):
    source, root, outside = roots
    data = source / "run" / "data"
    (data / "test_y.npy").symlink_to(outside / "secret.txt")
    with pytest.raises(Refusal, match="test_y.npy cannot be staged"):
        paths.stage(str(data), (str(source),), root, 10_000)
    assert _staged(root) == []  # the partial copy went


def test_stage_refuses_a_hard_link_to_a_file_outside(roots):
    source, root, outside = roots
    data = source / "run" / "data"
    os.link(outside / "secret.txt", data / "test_y.npy")
    with pytest.raises(Refusal, match="hard links"):
        paths.stage(str(data), (str(source),), root, 10_000)
    assert _staged(root) == []


def test_stage_refuses_a_fifo_without_blocking(roots):
    source, root, _ = roots
    data = source / "run" / "data"
    os.mkfifo(data / "pipe")  # opened for reading with no writer: must not hang
    with pytest.raises(Refusal, match="pipe is not a regular file"):
        paths.stage(str(data), (str(source),), root, 10_000)
    assert _staged(root) == []


def test_stage_refuses_a_unix_socket(roots):
    import socket

    source, root, _ = roots
    data = source / "run" / "data"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(data / "s.sock"))
        with pytest.raises(Refusal, match="s.sock cannot be staged"):
            paths.stage(str(data), (str(source),), root, 10_000)
    assert _staged(root) == []


def test_stage_refuses_a_device_file(roots):
    needs_root("mknod of a device needs root")
    source, root, _ = roots
    data = source / "run" / "data"
    try:
        os.mknod(data / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    except PermissionError:
        unavailable("mknod is not allowed here (a container without CAP_MKNOD)")
    with pytest.raises(Refusal, match="zero is not a regular file"):
        paths.stage(str(data), (str(source),), root, 10_000)


def test_stage_refuses_a_subdirectory(roots):
    source, root, _ = roots
    (source / "run" / "data" / "nested").mkdir()
    with pytest.raises(Refusal, match="nested is not a regular file"):
        paths.stage(str(source / "run" / "data"), (str(source),), root, 10_000)


def test_stage_refuses_more_than_max_bytes(roots):
    source, root, _ = roots
    with pytest.raises(Refusal, match="over the launcher's 1023 byte limit"):
        paths.stage(str(source / "run" / "data"), (str(source),), root, 1023)
    assert _staged(root) == []
    dest, _, total = paths.stage(str(source / "run" / "data"), (str(source),), root, 1024)  # exactly the limit
    assert total == 1024


def test_stage_refuses_too_many_files(roots):
    source, root, _ = roots
    crowd = source / "crowd"
    crowd.mkdir()
    for i in range(65):
        (crowd / f"f{i}").write_bytes(b"")
    with pytest.raises(Refusal, match="65 entries; at most 64"):
        paths.stage(str(crowd), (str(source),), root, 10_000)


def test_stage_refuses_a_missing_source(roots):
    source, root, _ = roots
    with pytest.raises(Refusal, match="'nothing'"):
        paths.stage(str(source / "nothing"), (str(source),), root, 10_000)
