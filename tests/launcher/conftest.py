"""Fixtures of the launcher tests: a real launcher on a short root, served or called directly.

The launcher root lives in /tmp with a short name (a job socket path below it must fit
107 bytes); the data sources are the test's own tmp_path. Every launcher fixture checks
on the way out that no container labelled with its root outlives the test.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from orchestrator.launcher.config import LauncherConfig
from orchestrator.launcher.server import LABEL_LAUNCHER, Launcher
from orchestrator.sandbox.docker import connect


def launcher_containers(client: docker.DockerClient, root: str | Path) -> list:
    """Every container (running or not) a launcher on ``root`` made."""
    return client.containers.list(all=True, ignore_removed=True, filters={"label": f"{LABEL_LAUNCHER}={root}"})


@pytest.fixture
def sandboxes_of(docker_client: docker.DockerClient) -> Callable[[str | Path], list[str]]:
    """``sandboxes_of(root)``: names of the containers a launcher on ``root`` made (running or not)."""
    return lambda root: sorted(c.name for c in launcher_containers(docker_client, root))


@pytest.fixture
def dirs_in() -> Callable[[str | Path], list[str]]:
    """``dirs_in(root)``: the job and data directories still in a launcher root."""
    return lambda root: sorted(p.name for p in Path(root).iterdir() if p.name.startswith(("job-", "data-")))


@pytest.fixture
def launcher_root() -> Iterator[Path]:
    """A short, fresh directory for a launcher root (removed afterwards)."""
    root = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_launcher(docker_client: docker.DockerClient, tmp_path: Path, launcher_root: Path) -> Iterator[Callable[..., Launcher]]:
    """``make_launcher(**overrides)``: a Launcher on ``launcher_root`` with small maxima, closed afterwards."""
    made: list[Launcher] = []

    def make(**overrides) -> Launcher:
        fields = dict(root=str(launcher_root), data_sources=(str(tmp_path),), max_memory="4g", max_cpus=2,
                      max_pids=512, max_time_s=600, max_sandboxes=4, lease_s=3)
        fields.update(overrides)
        # its own engine client: Launcher.close() closes the one it holds
        launcher = Launcher(LauncherConfig(**fields), client=connect())
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        launcher.close()
    left = launcher_containers(docker_client, launcher_root)
    for container in left:
        container.remove(force=True, v=True)
    assert not left, f"launcher sandboxes left behind: {[c.name for c in left]}"


@pytest.fixture
def launcher(make_launcher) -> Launcher:
    """A launcher (not serving its socket): call ``launcher.handle(bytes)``."""
    return make_launcher()


class Served:
    """A launcher answering its socket in a thread of this process."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.address = launcher.config.address
        self._stop = threading.Event()
        ready = threading.Event()
        self._thread = threading.Thread(target=launcher.serve, args=(self._stop,),
                                        kwargs={"on_ready": ready.set}, name="test-launcher", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise AssertionError("the launcher did not bind its socket within 10 s")

    def alive(self) -> bool:
        """True while the serving thread runs."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving (the launcher itself is closed by its fixture)."""
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "the launcher did not stop serving within 15 s"


@pytest.fixture
def served(launcher: Launcher) -> Iterator[Served]:
    """The launcher fixture, serving ``ipc://<root>/launcher.sock`` until the test ends."""
    server = Served(launcher)
    yield server
    server.stop()
