"""The sandbox in your own pytest suite, through testcontainers.

    from orchestrator.testing import check_model

    def test_my_net_learns_digits():
        outcome = check_model("models/net.py", dataset="digits", train=True, epochs=5)
        assert outcome.result.failure is None, outcome.result.failure
        assert outcome.scores.metrics["accuracy"].mean > 0.95

``check_model`` is ``researcher check`` as a function: it calls the same
``run_check`` and returns the same ``CheckOutcome``, with a failing model as a
recorded ``Failure``, never an exception. The containers are ``SandboxContainer``s,
testcontainers ``DockerContainer``s built from the product's own
``container_kwargs`` (no second copy of the hardening), checked once more on the
started container before any model code is sent. ``SandboxBackend`` hands them
to the runner, so a job speaks the same protocol over the same ``Slot`` and
``Channel`` as the command line.

testcontainers normally starts Ryuk, a reaper container from Docker Hub; hosts
without a registry set ``TESTCONTAINERS_RYUK_DISABLED=true``. Every sandbox
carries the product's labels either way, so ``researcher cleanup`` removes what
a killed test session leaves behind. Needs the ``test`` extra
(``pip install -e '.[test]'``).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import docker.errors
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer

from orchestrator.check import CheckOutcome, check_request, default_check_config, run_check
from orchestrator.exceptions import SandboxUnavailable
from orchestrator.sandbox.base import Mounts
from orchestrator.sandbox.config import DEFAULT_IMAGE, SOCKET_NAME, SandboxConfig, validate
from orchestrator.sandbox.docker import ContainerWatch, _explain_create_error, connect, container_kwargs
from orchestrator.sandbox.image import check_image

__all__ = ["SandboxBackend", "SandboxContainer", "check_model"]

#: Keys of ``container_kwargs`` that DockerContainer takes through its own API.
_OWN_API = ("image", "command", "environment", "volumes", "tmpfs", "name", "detach")


class SandboxContainer(DockerContainer, ContainerWatch):
    """One hardened sandbox container for one job, as a testcontainers container.

    It implements the runner's ``Sandbox`` protocol (start, exit_status,
    wait_exit, kill, logs, close); the worker inside says ``Ready`` over the
    job's socket, which ``Slot.wait_ready`` waits for.
    """

    def __init__(self, job_id: str, job_dir: Path, data_dir: Path | None, config: SandboxConfig,
                 *, docker_client_kw: dict | None = None) -> None:
        settings = container_kwargs(job_id, job_dir, data_dir, config)
        super().__init__(settings["image"], docker_client_kw=docker_client_kw, env=settings["environment"],
                         name=settings["name"])
        self.image = settings["image"]  # a local image: no hub prefix, never pulled
        self.with_command(settings["command"])
        for host, mount in settings["volumes"].items():
            self.with_volume_mapping(host, mount["bind"], mount["mode"])
        self.tmpfs.update(settings["tmpfs"])
        # Everything else (no network, read-only root, capabilities, user, limits, labels,
        # runtime, GPUs) goes to Docker as it is. `network` too: without it testcontainers
        # joins the container to the network of a container the tests run in (Docker in
        # Docker), and docker-py lets `network` override `network_mode`.
        rest = {key: value for key, value in settings.items() if key not in _OWN_API}
        self.with_kwargs(network=settings["network_mode"], **rest)
        self.settings = settings
        self._low_weight = "cpu_shares" in settings
        self.config = config
        self.mounts = Mounts(socket_path=f"/job/{SOCKET_NAME}", data_root="/data" if data_dir else None)
        self._init_watch()

    def start(self) -> SandboxContainer:
        """Check the image, create and start the container, verify its hardening, watch its exit."""
        client = self.get_docker_client().client
        try:
            check_image(client, self.image)  # else testcontainers would try to pull it
            super().start()
            problems = hardening_problems(client.api.inspect_container(self.get_container_id()), self.settings)
        except docker.errors.DockerException as exc:
            self.close()
            if "ryuk" in str(exc).lower():  # testcontainers starts its reaper first
                raise SandboxUnavailable(
                    f"testcontainers could not start Ryuk, its reaper, from {testcontainers_config.ryuk_image} "
                    f"({str(exc)[:200]}); without a registry set TESTCONTAINERS_RYUK_DISABLED=true"
                ) from exc
            raise _explain_create_error(exc, self.config) from exc
        except BaseException:
            self.close()
            raise
        if problems:  # no model code has been sent yet: the worker only waits for its Job
            self.close()
            raise SandboxUnavailable(f"the sandbox container is not hardened as asked: {'; '.join(problems)}")
        self._watch(self.settings["name"])
        return self

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        """Kill and remove the container, close the client; safe to call twice."""
        if self._container is not None:
            self.kill()
            if self._watching:
                self._exited.wait(10)
            try:
                self._container.remove(force=force, v=delete_volume)
            except docker.errors.NotFound:
                pass
            except docker.errors.DockerException:
                self._remove_by_name()
            self._container = None
        self.get_docker_client().client.close()

    def _remove_by_name(self) -> None:
        try:
            self.get_docker_client().client.containers.get(self.settings["name"]).remove(force=True, v=True)
        except docker.errors.DockerException:
            pass

    def close(self) -> None:
        """Remove the container (the runner's name for ``stop``)."""
        self.stop()


def hardening_problems(attrs: dict, settings: dict) -> list[str]:
    """Where a started container's inspect data differs from the hardening it was asked for."""
    host, config = attrs["HostConfig"], attrs["Config"]
    checks = [
        ("network", host.get("NetworkMode"), settings["network_mode"]),
        ("read-only root", bool(host.get("ReadonlyRootfs")), settings["read_only"]),
        ("dropped capabilities", sorted(host.get("CapDrop") or []), sorted(settings["cap_drop"])),
        ("added capabilities", host.get("CapAdd") or [], []),
        ("privileged", bool(host.get("Privileged")), False),
        ("security options", sorted(host.get("SecurityOpt") or []), sorted(settings["security_opt"])),
        ("user", config.get("User"), settings["user"]),
        ("pids limit", host.get("PidsLimit"), settings["pids_limit"]),
        ("writable mounts", [m["Destination"] for m in attrs.get("Mounts", []) if m.get("RW")], []),
        # named, never the engine's default (which may be nvidia's, passing every GPU to a cpu job)
        ("runtime", host.get("Runtime"), settings["runtime"]),
        ("environment", _values_of(config.get("Env") or [], settings["environment"]), settings["environment"]),
    ]
    return [f"{name} is {got!r}, not {want!r}" for name, got, want in checks if got != want]


def _values_of(env: list[str], wanted: dict[str, str]) -> dict[str, str | None]:
    """The container's values of our variables (NVIDIA_VISIBLE_DEVICES=void for cpu, thread counts)."""
    seen = dict(item.split("=", 1) for item in env if "=" in item)
    return {name: seen.get(name) for name in wanted}


class SandboxBackend:
    """A runner backend whose sandboxes are ``SandboxContainer``s (for ``run_job``, ``Slot``)."""

    name = "testcontainers"
    unsafe = False

    def __init__(self, image: str = DEFAULT_IMAGE, *, docker_client_kw: dict | None = None) -> None:
        client = connect()  # SandboxUnavailable saying how to get an engine
        try:
            check_image(client, image)
        finally:
            client.close()
        self._docker_client_kw = docker_client_kw
        self._made: list[SandboxContainer] = []

    def create(self, job_id: str, job_dir: Path, data_dir: Path | None, config: SandboxConfig) -> SandboxContainer:
        """A container (not yet started) for one job."""
        container = SandboxContainer(job_id, job_dir, data_dir, config, docker_client_kw=self._docker_client_kw)
        self._made.append(container)
        return container

    def close(self) -> None:
        """Remove any container this backend made that is still there."""
        for container in self._made:
            container.stop()
        self._made.clear()


def check_model(
    path: str | PathLike[str],
    *,
    class_name: str = "Net",
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    train: bool = False,
    epochs: int = 10,
    seeds: int = 1,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adamw",
    out: str | PathLike[str] | None = None,
    config: SandboxConfig | None = None,
) -> CheckOutcome:
    """``researcher check`` as a function: the same arguments and the same ``CheckOutcome``.

    Without ``config`` the sandbox gets the command line's defaults: every core,
    a 2g memory cap, and 120 s (600 s with ``train``) for the whole job.
    """
    request = check_request(path, class_name=class_name, input_shape=input_shape, num_classes=num_classes,
                            dataset=dataset, data_dir=data_dir, train=train, epochs=epochs, seeds=seeds,
                            batch_size=batch_size, lr=lr, optimizer=optimizer, out=out)
    config = validate(config) if config is not None else default_check_config(train=train)
    return run_check(request, lambda: SandboxBackend(config.image), config, progress=False)
