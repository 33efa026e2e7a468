"""Runs made before the settings were typed (``extra``, ``llm_base_url``, ``runtime``) still open and resume.

The fixtures were written by that version: ``fixtures/old-run`` is a run directory
(``researcher run --dataset iris --max-candidates 1 --seeds 1 --cpus 1``, interrupted
before its candidate ran) and ``fixtures/old-settings-llm.json`` the run.json of an
LLM run with non-default sandbox settings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator import cli, research
from orchestrator.exceptions import UsageError
from orchestrator.registry import LLMConfig, Registry
from orchestrator.registry.settings import decode_settings, migrate
from orchestrator.sandbox.config import SandboxConfig

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "old"
    shutil.copytree(FIXTURES / "old-run", run)
    return run


def test_an_offline_runs_settings_become_typed_with_the_defaults_resume_used():
    settings = decode_settings((FIXTURES / "old-run" / "run.json").read_bytes())
    assert settings.llm is None and settings.planner == "offline"
    assert (settings.dataset, settings.dataset_from, settings.seeds, settings.max_candidates) == ("iris", "flag", (0,), 1)
    assert settings.sandbox == SandboxConfig(memory="2g", cpus=1.0, pids=256, timeout_s=900.0,
                                             container_runtime="runc", device="cpu", gpus=())
    assert settings.device == "cpu"


def test_an_llm_runs_settings_keep_its_endpoint_mode_timeout_and_sandbox():
    settings = decode_settings((FIXTURES / "old-settings-llm.json").read_bytes())
    assert settings.llm == LLMConfig(base_url="http://127.0.0.1:11434/v1", model="qwen", mode="source",
                                       timeout_s=30.0)
    assert settings.planner == "llm" and settings.dataset_from == "goal"
    assert settings.sandbox == SandboxConfig(memory="3g", cpus=2.0, pids=300, timeout_s=600.0,
                                             container_runtime="runsc", gpus=("0", "1"))
    assert (settings.seeds, settings.parallel, settings.search_seed, settings.keep) == ((0, 1), 2, 7, True)


def test_missing_sandbox_keys_take_the_defaults_the_old_resume_took():
    old = json.loads((FIXTURES / "old-run" / "run.json").read_text())
    old["extra"] = {}
    old["runtime"] = "runsc"
    sandbox = decode_settings(json.dumps(old)).sandbox
    assert (sandbox.memory, sandbox.cpus, sandbox.pids, sandbox.timeout_s, sandbox.container_runtime) == (
        "2g", 1.0, 256, 900.0, "runsc")


def test_new_settings_pass_through_the_migration_unchanged():
    settings = decode_settings((FIXTURES / "old-settings-llm.json").read_bytes())
    import msgspec

    data = msgspec.to_builtins(settings)
    assert migrate(dict(data)) == data
    assert decode_settings(msgspec.json.encode(settings)) == settings


def test_settings_that_are_no_object_are_a_usage_error():
    with pytest.raises(UsageError, match="invalid"):
        decode_settings(b"[1, 2]")


def test_an_old_registry_opens_and_reads_migrated_settings(old_run: Path):
    with Registry.open(old_run, readonly=True) as registry:
        assert registry.run_info().status == "interrupted"
        assert registry.settings.sandbox.timeout_s == 900.0


def test_resume_builds_the_sandbox_from_the_stored_config_with_this_hosts_jobs_dir(old_run, tmp_path, monkeypatch):
    taken = []
    monkeypatch.setattr(research, "resume_run", lambda run_dir, **kw: taken.append(kw["config"]) or 0)
    jobs = tmp_path / "jobs"
    assert cli.main(["resume", str(old_run), "--jobs-dir", str(jobs)]) == 0
    assert taken == [SandboxConfig(memory="2g", cpus=1.0, pids=256, timeout_s=900.0, container_runtime="runc",
                                   device="cpu", jobs_dir=str(jobs))]


def test_an_old_interrupted_run_resumes_and_finishes(old_run, monkeypatch, capsys):
    from orchestrator.sandbox.local import SubprocessBackend

    monkeypatch.setattr(cli, "docker_backend_factory", lambda image: SubprocessBackend)
    assert cli.main(["resume", str(old_run)]) == 0
    capsys.readouterr()
    with Registry.open(old_run, readonly=True) as registry:
        assert registry.run_info().status == "finished"
        assert [c.status for c in registry.candidates()] == ["passed"]
    # run.json is rewritten in the typed format; the registry's row is migrated on every read
    stored = json.loads((old_run / "run.json").read_text())
    assert "extra" not in stored and stored["sandbox"]["timeout_s"] == 900.0 and stored["llm"] is None
