"""`researcher doctor`: one table of what this host offers and what is missing, with the fix."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from orchestrator.exceptions import SandboxUnavailable
from orchestrator.safetext import inert
from orchestrator.sandbox.config import DEFAULT_IMAGE

_RUNS_FREE_GB = 2.0  # a run's registry, predictions, plots and checkpoints
_BUILD_FREE_GB = 10.0  # and building the sandbox image (about 6 GB) on this disk


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's table."""

    check: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def check_engine() -> tuple[Finding, object | None]:
    """Is a Docker engine reachable?"""
    from orchestrator.sandbox.docker import connect

    try:
        client = connect(timeout=10)
    except SandboxUnavailable as exc:
        return Finding("docker engine", False, str(exc).split(". ")[0],
                       "run scripts/setup.sh (installs docker.io and starts dockerd), or set DOCKER_HOST"), None
    version = client.version().get("Version", "?")
    return Finding("docker engine", True, f"Docker {version} answers"), client


def check_image(client, tag: str) -> Finding:
    """Is the sandbox image present and speaking our protocol?"""
    from orchestrator.sandbox.image import check_image as inspect

    try:
        info = inspect(client, tag)
    except SandboxUnavailable as exc:
        return Finding("sandbox image", False, str(exc), "researcher image build")
    return Finding("sandbox image", True, f"{tag}, protocol {info.protocol}, {info.size_bytes / 1e9:.1f} GB")


def check_orchestrator_image(client) -> Finding:
    """The orchestrator image that compose.yaml runs (optional: the host CLI does not need it)."""
    from orchestrator.deploy import ORCHESTRATOR_IMAGE, check_orchestrator_image as inspect

    try:
        info = inspect(client, ORCHESTRATOR_IMAGE)
    except SandboxUnavailable as exc:
        detail = f"{ORCHESTRATOR_IMAGE} not built" if "not found" in str(exc) else str(exc)
        return Finding("orchestrator image", False, f"{detail} (only `docker compose up` needs it)",
                       "researcher image build --orchestrator", required=False)
    return Finding("orchestrator image", True, f"{ORCHESTRATOR_IMAGE}, protocol {info.protocol}, for docker compose up")


def check_runtimes(info: dict) -> list[Finding]:
    """gVisor and the NVIDIA runtime, from `docker info`."""
    runtimes = set((info.get("Runtimes") or {}).keys())
    gvisor = Finding("gVisor (runsc)", "runsc" in runtimes,
                     "registered" if "runsc" in runtimes else "not registered with dockerd",
                     "apt-get install runsc; scripts/setup.sh registers it with --network=none --host-uds=open",
                     required=False)
    nvidia = "nvidia" in runtimes or bool(shutil.which("nvidia-container-runtime"))
    gpus = _gpu_names()
    gpu = Finding("NVIDIA runtime and GPUs", nvidia and bool(gpus),
                  f"{len(gpus)} GPU(s): {', '.join(gpus)}" if gpus else "no NVIDIA GPU visible to this host",
                  "for --device cuda: install the NVIDIA driver and nvidia-container-toolkit, restart dockerd",
                  required=False)
    if gpus and not nvidia:
        gpu = Finding(gpu.check, False, f"{len(gpus)} GPU(s) but no NVIDIA container runtime", gpu.fix, required=False)
    return [gvisor, gpu]


def _gpu_names() -> list[str]:
    from orchestrator.sandbox.gpus import host_gpus

    return [f"{index}: {name}" for index, name in host_gpus()]


def check_disk(path: Path, *, image_built: bool) -> Finding:
    """Free disk where runs go; with room to build the sandbox image when it is not built yet."""
    free = shutil.disk_usage(path).free / 1e9
    need, purpose = ((_RUNS_FREE_GB, "for runs") if image_built else
                     (_BUILD_FREE_GB, "to build the sandbox image (about 6 GB) and hold runs"))
    return Finding("free disk", free >= need, f"{free:.0f} GB free at {path}",
                   f"free at least {need:.0f} GB {purpose}")


def check_datasets(data_dir: str | None) -> list[Finding]:
    """Which datasets load here."""
    from evaluator.datasets import available_datasets

    rows = []
    for info in available_datasets(data_dir):
        if info.available:
            rows.append(Finding(f"dataset {info.name}", True, info.detail, required=info.name == "digits"))
        else:
            where = "needs --data-dir" if info.needs_data_dir and data_dir is None else "not found"
            rows.append(Finding(f"dataset {info.name}", False, where, info.detail, required=info.name == "digits"))
    return rows


def check_launcher(address: str, image: str) -> list[Finding]:
    """The engine, image, runtimes and GPUs as the launcher at ``address`` reports them."""
    from orchestrator.launcher.client import hello
    from sandbox_image.protocol import PROTOCOL_VERSION

    try:
        w = hello(address)
    except SandboxUnavailable as exc:
        return [Finding("launcher", False, str(exc), "start it: `researcher launcher` (compose: the launcher service)")]
    image_ok = w.image_present and w.image_protocol == str(PROTOCOL_VERSION) and image in (w.image, DEFAULT_IMAGE)
    detail = (f"{w.image}, protocol {w.image_protocol}" if w.image_present else f"{w.image} not built")
    gpus = ", ".join(f"{i}: {n}" for i, n in w.gpus)
    return [
        Finding("launcher", True, f"{address}: Docker {w.engine}; grants up to {w.max_memory}, {w.max_cpus:g} cpus, "
                                  f"{w.max_sandboxes} sandboxes, {w.max_time_s:g} s; lease {w.lease_s:g} s"),
        Finding("sandbox image", image_ok, detail, "researcher image build (on the Docker host)"),
        Finding("gVisor (runsc)", "runsc" in w.runtimes, "granted" if "runsc" in w.runtimes else "not granted",
                "register runsc with dockerd and start the launcher with --runtimes runc,runsc", required=False),
        Finding("NVIDIA runtime and GPUs", "cuda" in w.devices and bool(w.gpus),
                f"{len(w.gpus)} GPU(s): {gpus}" if w.gpus else "no GPU granted by the launcher",
                "start the launcher with --gpus all on a host with nvidia-container-toolkit", required=False),
    ]


def diagnose(*, image: str, data_dir: str | None = None, runs_dir: Path = Path("."),
             launcher: str | None = None) -> list[Finding]:
    """Every finding, in table order; through the launcher at ``launcher`` when given."""
    if launcher:
        findings = check_launcher(launcher, image)
        findings.append(check_disk(runs_dir if runs_dir.exists() else Path("."), image_built=True))
        findings.extend(check_datasets(data_dir))
        return findings
    engine, client = check_engine()
    findings = [engine]
    if client is not None:
        try:
            findings.append(sandbox := check_image(client, image))
            findings.append(check_orchestrator_image(client))
            findings.extend(check_runtimes(client.info()))
        finally:
            client.close()
    else:
        findings.append(sandbox := Finding("sandbox image", False, "unknown: no engine", "start the engine first"))
    findings.append(check_disk(runs_dir if runs_dir.exists() else Path("."), image_built=sandbox.ok))
    findings.extend(check_datasets(data_dir))
    return findings


def print_table(findings: list[Finding], stream) -> int:
    """Print the table; 0 when everything required is there, else 3.

    Details quote engine errors, image labels and file names: shown inert.
    """
    width = max(len(inert(f.check)) for f in findings)
    for f in findings:
        mark = "ok  " if f.ok else ("MISSING" if f.required else "absent ")
        stream.write(f"{mark:<8} {inert(f.check):<{width}}  {inert(f.detail)}\n")
        if not f.ok and f.fix:
            stream.write(f"{'':<8} {'':<{width}}  fix: {inert(f.fix)}\n")
    missing = [inert(f.check) for f in findings if f.required and not f.ok]
    stream.write("\nready: every required piece is here\n" if not missing else f"\nnot ready: {', '.join(missing)}\n")
    return 0 if not missing else 3
