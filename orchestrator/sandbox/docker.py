"""The Docker backend: one hardened, network-less container per job.

Every setting of DESIGN.md section 4 is on by default and none can be turned
off from the command line: no network, read-only root, a capped tmpfs for
/tmp, all capabilities dropped, no-new-privileges, uid 65534, pids, memory
(= memory + swap) and CPU caps, nofile and core ulimits, a capped log, an init
process (so a kill is immediate), only the environment we set, the job socket
and data mounted read-only, and no Docker socket. The runtime is always named
(``runc`` unless ``--runtime``) and a cpu job sets ``NVIDIA_VISIBLE_DEVICES=void``:
on a host whose default runtime is ``nvidia``, a container that named neither
would see every GPU (CUDA images set ``NVIDIA_VISIBLE_DEVICES=all``). Docker SDK
errors are translated here, once, into ``orchestrator.exceptions``.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import docker
import docker.errors
from docker.types import DeviceRequest, LogConfig, Ulimit

from orchestrator.exceptions import SandboxError, SandboxUnavailable
from orchestrator.sandbox.base import ExitStatus, Mounts
from orchestrator.sandbox.config import JOB_CPU_SHARES, SOCKET_NAME, STANDBY_CPU_SHARES, SandboxConfig

LABEL_ROLE = "org.pytorch-researcher.role"
LABEL_JOB = "org.pytorch-researcher.job"
LABEL_OWNER = "org.pytorch-researcher.owner"  # "<hostname>:<pid>" of the orchestrator
ROLE_SANDBOX = "sandbox"


def owner_id() -> str:
    """Identifies this orchestrator process on this host."""
    return f"{socket.gethostname()}:{os.getpid()}"


def connect(timeout: float = 30.0) -> docker.DockerClient:
    """A Docker client, or SandboxUnavailable saying how to get an engine."""
    client = None
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except docker.errors.DockerException as exc:
        if client is not None:
            client.close()
        raise SandboxUnavailable(
            "no Docker engine answers "
            f"({exc.__class__.__name__}: {str(exc)[:200]}). Start one (`sudo dockerd &` or "
            "`systemctl start docker`), or run scripts/setup.sh, which installs and starts it; "
            "set DOCKER_HOST if your engine listens elsewhere."
        ) from exc
    return client


def container_kwargs(job_id: str, job_dir: Path, data_dir: Path | None, config: SandboxConfig, *,
                     labels: dict[str, str] | None = None) -> dict:
    """The docker SDK arguments of one hardened job container (pure, for tests); ``labels`` are added."""
    # Docker takes a relative path for the name of a volume, not a bind mount: resolve.
    volumes = {str(Path(job_dir).resolve()): {"bind": "/job", "mode": "ro"}}
    if data_dir is not None:
        volumes[str(Path(data_dir).resolve())] = {"bind": "/data", "mode": "ro"}
    kwargs = dict(
        image=config.image,
        command=(["--warm-up"] if config.warm_up else []) + [f"/job/{SOCKET_NAME}"],
        detach=True,
        network_mode="none",
        read_only=True,
        tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={config.tmpfs_size}"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        user="65534:65534",
        pids_limit=config.pids,
        mem_limit=config.memory,
        memswap_limit=config.memory,
        nano_cpus=int(config.cpus * 1e9),
        ulimits=[
            Ulimit(name="nofile", soft=config.nofile, hard=config.nofile),
            Ulimit(name="core", soft=0, hard=0),
        ],
        log_config=LogConfig(type="json-file", config={"max-size": config.log_max_size, "max-file": "1"}),
        init=True,
        environment=_environment(config),
        volumes=volumes,
        hostname="sandbox",
        labels={**(labels or {}), LABEL_ROLE: ROLE_SANDBOX, LABEL_JOB: job_id, LABEL_OWNER: owner_id()},
        name=f"researcher-{job_id}",
        runtime=config.container_runtime,  # named even for runc: the engine's default may be nvidia's
    )
    if config.warm_up and config.container_runtime == "runc":  # a pool slot: its start-up takes only CPU jobs leave idle
        # (runsc has no `update`: a gVisor container would keep the low weight for its job too)
        kwargs["cpu_shares"] = STANDBY_CPU_SHARES
    if config.device == "cuda":
        ids = [config.gpu] if config.gpu is not None else None
        kwargs["device_requests"] = [
            DeviceRequest(device_ids=ids, count=None if ids else 1, capabilities=[["gpu"]])
        ]
    return kwargs


def _environment(config: SandboxConfig) -> dict[str, str]:
    """The container's whole environment: thread counts, hash seed, and no GPU for cpu jobs."""
    threads = str(config.threads)
    env = {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "PYTHONHASHSEED": "0",
    }
    if config.device != "cuda":
        # Read by NVIDIA's container runtime and hook: "void" exposes no GPU even where they run.
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    return env


def _explain_create_error(exc: docker.errors.DockerException, config: SandboxConfig) -> SandboxError:
    text = str(exc)
    if isinstance(exc, docker.errors.ImageNotFound) or "No such image" in text:
        return SandboxUnavailable(
            f"sandbox image {config.image!r} is not built: run `researcher image build`"
        )
    if "could not select device driver" in text or "nvidia" in text.lower():
        return SandboxUnavailable(
            "--device cuda needs a GPU and the NVIDIA container toolkit on the Docker host "
            f"({text[:200]}). Install nvidia-container-toolkit and restart dockerd, or use --device cpu."
        )
    if "unknown or invalid runtime" in text or "runtime" in text and config.container_runtime != "runc":
        return SandboxUnavailable(
            f"Docker has no runtime {config.container_runtime!r} ({text[:200]}). Install gVisor (`apt-get "
            "install runsc`) and register it in /etc/docker/daemon.json with runtimeArgs "
            "[\"--network=none\", \"--host-uds=open\"] (scripts/setup.sh does this), or use --runtime runc."
        )
    return SandboxUnavailable(f"could not start a sandbox container: {text[:400]}")


class ContainerWatch:
    """Exit status, kill and logs of one started container, watched by a thread.

    Shared by ``DockerSandbox`` and ``orchestrator.testing.SandboxContainer``:
    both set ``_container`` (a docker-py Container) and call ``_watch()`` once
    it has started.
    """

    _container = None
    _low_weight = False  # started with STANDBY_CPU_SHARES: prioritise() has something to undo

    def _init_watch(self) -> None:
        self._exit: ExitStatus | None = None
        self._exited = threading.Event()
        self._watching = False

    def _watch(self, name: str) -> None:
        self._watching = True
        threading.Thread(target=self._wait, name=f"wait-{name}", daemon=True).start()

    def _wait(self) -> None:
        container = self._container
        try:
            result = container.wait()
            state = container.client.api.inspect_container(container.id)["State"]
            self._exit = ExitStatus(
                exit_code=int(result.get("StatusCode", state.get("ExitCode", -1))),
                oom_killed=bool(state.get("OOMKilled")),
                error=str(state.get("Error") or ""),
            )
        except docker.errors.DockerException as exc:
            self._exit = ExitStatus(exit_code=-1, error=f"lost the container: {exc}")
        self._exited.set()

    def exit_status(self) -> ExitStatus | None:
        """The exit status once the container has stopped (never blocks)."""
        return self._exit if self._exited.is_set() else None

    def wait_exit(self, timeout: float) -> ExitStatus | None:
        """Wait up to ``timeout`` seconds for the container to stop."""
        self._exited.wait(timeout)
        return self.exit_status()

    def kill(self) -> None:
        """SIGKILL the container (its init process makes this immediate)."""
        if self._container is None or self._exited.is_set():
            return
        try:
            self._container.kill()
        except docker.errors.DockerException:
            pass  # already stopped: the waiter thread reports how

    def prioritise(self) -> None:
        """Raise the container's CPU weight to the default (a standby slot got its job)."""
        if self._container is None or not self._low_weight:
            return
        try:
            self._container.update(cpu_shares=JOB_CPU_SHARES)
        except docker.errors.DockerException:
            pass  # gone already: the job fails on its own and is recorded

    def logs(self, tail: int = 50) -> str:
        """The last lines of the container's output."""
        if self._container is None:
            return ""
        try:
            return self._container.logs(tail=tail).decode("utf-8", "replace")
        except docker.errors.DockerException:
            return ""


class DockerSandbox(ContainerWatch):
    """One container for one job; a context manager that always removes it."""

    def __init__(self, client: docker.DockerClient, kwargs: dict, data_dir: Path | None) -> None:
        self._client = client
        self._kwargs = kwargs
        self._low_weight = "cpu_shares" in kwargs
        self._container = None
        self._init_watch()
        self.mounts = Mounts(socket_path=f"/job/{SOCKET_NAME}", data_root="/data" if data_dir else None)

    def __enter__(self) -> DockerSandbox:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        """Create and start the container, and watch for its exit in a thread."""
        try:
            # create + start, not run: run() pulls a missing image from a registry.
            create = {k: v for k, v in self._kwargs.items() if k != "detach"}
            self._container = self._client.containers.create(**create)
            self._container.start()
        except docker.errors.DockerException as exc:
            self._remove_by_name()
            raise _explain_create_error(exc, _config_from(self._kwargs)) from exc
        self._watch(self._kwargs["name"])

    def peak_memory(self) -> int | None:
        """Peak memory of the container so far in bytes, from its cgroup (None if unreadable)."""
        if self._container is None:
            return None
        cid = self._container.id
        for path in (f"/sys/fs/cgroup/memory/docker/{cid}/memory.max_usage_in_bytes",  # cgroup v1
                     f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.peak",  # v2, systemd driver
                     f"/sys/fs/cgroup/docker/{cid}/memory.peak"):  # v2, cgroupfs driver
            try:
                return int(Path(path).read_text())
            except (OSError, ValueError):
                continue
        return None

    def close(self) -> None:
        """Kill and remove the container; safe to call twice."""
        if self._container is None:
            return
        self.kill()
        self._exited.wait(10)
        try:
            self._container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException:
            self._remove_by_name()
        self._container = None

    def _remove_by_name(self) -> None:
        try:
            self._client.containers.get(self._kwargs["name"]).remove(force=True, v=True)
        except docker.errors.DockerException:
            pass


def _config_from(kwargs: dict) -> SandboxConfig:
    return SandboxConfig(image=kwargs["image"], container_runtime=kwargs.get("runtime", "runc"))


class DockerBackend:
    """Creates hardened containers; removes orphans of dead orchestrators."""

    name = "docker"
    unsafe = False

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self._client = client or connect()
        self.reap_orphans()

    def create(self, job_id: str, job_dir: Path, data_dir: Path | None, config: SandboxConfig) -> DockerSandbox:
        """A container (not yet started) for one job."""
        return DockerSandbox(self._client, container_kwargs(job_id, job_dir, data_dir, config), data_dir)

    def containers(self, *, all_owners: bool = False) -> list:
        """Sandbox containers of this orchestrator (or of every one)."""
        filters = {"label": [f"{LABEL_ROLE}={ROLE_SANDBOX}"]}
        if not all_owners:
            filters["label"].append(f"{LABEL_OWNER}={owner_id()}")
        try:
            # ignore_removed: a container removed between the list and its inspect (a slot of
            # another thread closing) is gone, which is what the caller wants anyway.
            return self._client.containers.list(all=True, ignore_removed=True, filters=filters)
        except docker.errors.DockerException as exc:
            raise SandboxUnavailable(f"cannot list containers: {exc}") from exc

    def reap_orphans(self, *, everyone: bool = False) -> int:
        """Remove sandbox containers whose orchestrator on this host is gone.

        Containers of orchestrators on other hosts sharing this engine are left
        alone unless ``everyone`` is set (``researcher cleanup --all``).
        """
        host = socket.gethostname()
        removed = 0
        for container in self.containers(all_owners=True):
            owner = container.labels.get(LABEL_OWNER, "")
            owner_host, _, pid = owner.rpartition(":")
            mine = owner_host == host and pid.isdigit()
            if not everyone and (not mine or _alive(int(pid))):
                continue
            try:
                container.remove(force=True, v=True)
                removed += 1
            except docker.errors.DockerException:
                pass
        return removed

    def close(self) -> None:
        """Remove every container this process still owns."""
        for container in self.containers():
            try:
                container.remove(force=True, v=True)
            except docker.errors.DockerException:
                pass
        self._client.close()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
