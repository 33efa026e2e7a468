"""Every `researcher` option defaults to its RESEARCHER_* environment variable (compose.yaml's settings)."""

import argparse
from pathlib import Path

import pytest

from orchestrator import cli

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No RESEARCHER_* or API key from the developer's shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith(cli.ENV_PREFIX) or name in ("OPENAI_API_KEY", "LLM_API_KEY"):
            monkeypatch.delenv(name)


def _parsers(parser: argparse.ArgumentParser, path=("researcher",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _options(parser):
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_every_option_of_every_subcommand_names_its_variable_in_help():
    parser = cli.build_parser()
    seen = 0
    for path, sub in _parsers(parser):
        for action in _options(sub):
            long = next(o for o in action.option_strings if o.startswith("--"))
            var = "RESEARCHER_" + long[2:].replace("-", "_").upper()
            assert f"[env {var}]" in action.help, f"{' '.join(path)} {long}"
            seen += 1
    assert seen > 50  # run, check, bench, image build ... all walked


def test_help_shows_the_variable_and_never_a_value(monkeypatch, capsys):
    monkeypatch.setenv("RESEARCHER_LLM_API_KEY", "sk-secret-value")
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "[env RESEARCHER_GOAL]" in out and "[env RESEARCHER_JOBS_DIR]" in out
    assert "sk-secret-value" not in out


def test_the_variable_is_the_default_and_the_flag_wins(monkeypatch):
    monkeypatch.setenv("RESEARCHER_SEEDS", "2")
    monkeypatch.setenv("RESEARCHER_RUNS_DIR", "/srv/runs")
    monkeypatch.setenv("RESEARCHER_DEVICE", "cuda")
    monkeypatch.setenv("RESEARCHER_GOAL", "F1 above 0.9")
    args = cli.build_parser().parse_args(["run"])
    assert (args.seeds, args.runs_dir, args.device, args.goal) == (2, Path("/srv/runs"), "cuda", "F1 above 0.9")
    args = cli.build_parser().parse_args(["run", "--seeds", "5", "--device", "cpu"])
    assert (args.seeds, args.device) == (5, "cpu")
    # The same variable serves every subcommand that has the option.
    assert cli.build_parser().parse_args(["check", "m.py"]).seeds == 2


def test_an_empty_variable_counts_as_unset(monkeypatch):
    for name in ("RESEARCHER_SEEDS", "RESEARCHER_KEEP", "RESEARCHER_RUNS_DIR", "RESEARCHER_CPUS", "RESEARCHER_DEVICE"):
        monkeypatch.setenv(name, "")
    args = cli.build_parser().parse_args(["run"])
    assert (args.seeds, args.keep, args.runs_dir, args.cpus, args.device) == (3, False, Path("runs"), None, "cpu")


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("TRUE", True), ("yes", True), ("on", True),
                                                 ("0", False), ("false", False), ("No", False), ("off", False)])
def test_flags_take_booleans(monkeypatch, value, expected):
    monkeypatch.setenv("RESEARCHER_KEEP", value)
    assert cli.build_parser().parse_args(["run"]).keep is expected


@pytest.mark.parametrize(("var", "value", "needle"), [
    ("RESEARCHER_KEEP", "maybe", "RESEARCHER_KEEP='maybe' is not a boolean"),
    ("RESEARCHER_SEEDS", "three", "environment variable RESEARCHER_SEEDS: invalid int value: 'three'"),
    ("RESEARCHER_CPUS", "1,5", "environment variable RESEARCHER_CPUS: invalid float value"),
    ("RESEARCHER_DEVICE", "tpu", "environment variable RESEARCHER_DEVICE: invalid choice: 'tpu'"),
    ("RESEARCHER_LLM_MODE", "poem", "environment variable RESEARCHER_LLM_MODE: invalid choice"),
])
def test_a_bad_value_is_a_usage_error_naming_the_variable(monkeypatch, capsys, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as exc:
        cli.main(["run"])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_a_bad_variable_for_another_subcommand_is_ignored(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RESEARCHER_DEVICE", "tpu")  # `ls` has no --device
    assert cli.main(["ls", str(tmp_path)]) == 0
    assert "no runs" in capsys.readouterr().out


def test_the_api_key_comes_from_the_flag_then_researcher_then_openai_then_llm(monkeypatch):
    def key(*argv):
        return cli._api_key(cli.build_parser().parse_args(["run", *argv]))

    monkeypatch.setenv("LLM_API_KEY", "llm")
    assert key() == "llm"
    monkeypatch.setenv("OPENAI_API_KEY", "openai")
    assert key() == "openai"
    monkeypatch.setenv("RESEARCHER_LLM_API_KEY", "researcher")
    assert key() == "researcher"
    assert key("--llm-api-key", "flag") == "flag"


def test_jobs_dir_from_the_environment_reaches_the_sandbox_config(monkeypatch, tmp_path):
    monkeypatch.setenv("RESEARCHER_JOBS_DIR", "jobs")
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["run"])
    config = cli.sandbox_config(args, default_timeout=60.0)
    assert config.jobs_dir == str(tmp_path / "jobs")  # absolute: the engine resolves it on the host


def test_a_jobs_dir_too_long_for_a_socket_fails_before_any_container(monkeypatch, capsys):
    monkeypatch.setattr(cli, "docker_backend_factory", lambda image: pytest.fail("a sandbox was requested"))
    monkeypatch.setenv("RESEARCHER_JOBS_DIR", "/tmp/" + "j" * 80)
    code = cli.main(["check", str(MODELS / "good_mlp.py"), "--input-shape", "1,8,8", "--num-classes", "10"])
    assert code == 2
    err = capsys.readouterr().err
    assert "too long for a unix socket" in err and "limit is 107" in err
