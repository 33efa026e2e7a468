"""GPU spreading and how many sandboxes run at once (no GPU needed: nvidia-smi is faked)."""

import os
import stat

import pytest

from orchestrator import cli
from orchestrator.exceptions import UsageError
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.local import SubprocessBackend
from orchestrator.sandbox.gpus import bound_parallel, host_gpus, parse_gpu_ids
from orchestrator.sandbox.pool import WarmPool


@pytest.fixture
def two_gpus(tmp_path, monkeypatch):
    """An nvidia-smi on PATH that lists two H100s, as the real one prints them."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0, NVIDIA H100 80GB HBM3\\n1, NVIDIA H100 80GB HBM3\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_host_gpus_reads_nvidia_smi(two_gpus):
    assert host_gpus() == [("0", "NVIDIA H100 80GB HBM3"), ("1", "NVIDIA H100 80GB HBM3")]


def test_no_driver_means_no_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert host_gpus() == []


def test_gpu_ids_are_indices_or_uuids():
    assert parse_gpu_ids("0, 1,1") == ("0", "1", "1")
    assert parse_gpu_ids("GPU-5c0d6a1e-0000-4b3c-9b8e-1f2e3d4c5b6a") == ("GPU-5c0d6a1e-0000-4b3c-9b8e-1f2e3d4c5b6a",)
    for bad in ("", "all", "0;1", "cuda:0"):
        with pytest.raises(UsageError, match="--gpus"):
            parse_gpu_ids(bad)


def test_parallel_is_bounded_by_gpus_on_cuda_and_by_cores_on_cpu():
    n, why = bound_parallel(4, device="cuda", cores=16, gpus=("0", "1"))
    assert n == 2 and "one GPU per sandbox" in why and "list an id twice" in why
    assert bound_parallel(4, device="cuda", cores=16, gpus=("0", "0", "1", "1")) == (4, "")
    assert bound_parallel(3, device="cuda", cores=2, gpus=()) == (3, "")  # unknown GPUs: Docker picks
    assert bound_parallel(2, device="cpu", cores=2, gpus=()) == (2, "")
    n, why = bound_parallel(8, device="cpu", cores=2, gpus=())
    assert n == 2 and "2 cores" in why
    assert bound_parallel(4, device="cpu", cores=2, gpus=(), cpus=0.5) == (4, "")


def test_cuda_sandbox_config_lists_every_gpu_by_default(two_gpus):
    args = cli.build_parser().parse_args(["run", "--device", "cuda"])
    config = cli.sandbox_config(args, default_timeout=900)
    assert config.gpus == ("0", "1") and config.gpu is None
    pinned = cli.sandbox_config(cli.build_parser().parse_args(["check", "m.py", "--device", "cuda", "--gpus", "1"]),
                                default_timeout=120)
    assert pinned.gpus == ("1",) and pinned.gpu == "1"  # a single job (check) goes to the first listed
    assert cli.sandbox_config(cli.build_parser().parse_args(["run"]), default_timeout=900).gpus == ()


def test_the_pool_spreads_cuda_slots_over_the_gpus_round_robin():
    config = SandboxConfig(device="cuda", gpus=("0", "1"))
    pool = WarmPool(SubprocessBackend(), config, size=2)
    picked = []
    for _ in range(4):
        picked.append(pool._slot_config().gpu)
        pool._launched += 1
    assert picked == ["0", "1", "0", "1"]
    assert WarmPool(SubprocessBackend(), SandboxConfig(gpus=("0",)), size=1).gpus == ()  # cpu runs ask for none


def test_run_caps_parallel_with_a_note_and_records_what_it_used(tmp_path, monkeypatch, capsys):
    from orchestrator.registry import Registry

    monkeypatch.setattr(cli, "docker_backend_factory", lambda image: SubprocessBackend)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    code = cli.main(["run", "--dataset", "iris", "--max-candidates", "1", "--seeds", "1", "--parallel", "8",
                     "--runs-dir", str(tmp_path), "--name", "capped"])
    assert code == 0
    assert "--parallel 8 capped at 2: this host has 2 cores" in capsys.readouterr().err
    with Registry.open(tmp_path / "capped", readonly=True) as registry:
        assert registry.settings.parallel == 2 and registry.settings.sandbox.cpus == 1.0


@pytest.mark.parametrize(("cores", "parallel", "cpus"), [(1, 1, 1.0), (2, 1, 2.0), (2, 2, 1.0), (3, 1, 3.0),
                                                         (4, 1, 3.0), (16, 1, 12.0), (16, 2, 6.0), (16, 64, 1.0)])
def test_a_run_keeps_a_quarter_of_a_big_hosts_cores_for_start_ups(cores, parallel, cpus):
    from orchestrator.sandbox.config import run_cpus

    assert run_cpus(cores, parallel) == cpus
