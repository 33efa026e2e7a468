"""`researcher` exit codes and messages that need no sandbox."""

import gc
import json
from pathlib import Path

import pytest

from orchestrator import cli

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_syntax_errors_are_reported_on_the_host_before_any_container(capsys, monkeypatch):
    def no_docker(*args, **kwargs):
        raise AssertionError("a sandbox was requested for a file that does not parse")

    monkeypatch.setattr(cli, "docker_backend_factory", lambda image: no_docker)
    code = cli.main(["check", str(MODELS / "syntax_error.py"), "--input-shape", "1,8,8", "--num-classes", "10", "--json"])
    assert code == 1
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "failed"
    assert data["failure"]["kind"] == "syntax_error"
    assert "line 2" in data["failure"]["message"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["check", "/nonexistent/model.py", "--input-shape", "1,8,8", "--num-classes", "10"], "cannot read model file"),
        (["check", str(MODELS / "good_mlp.py"), "--input-shape", "1,x,8", "--num-classes", "10"], "--input-shape"),
        (["check", str(MODELS / "good_mlp.py"), "--input-shape", "1,8,8", "--num-classes", "10", "--memory", "lots"], "--memory"),
        (["check", str(MODELS / "good_mlp.py")], "--input-shape and --num-classes"),
        (["check", str(MODELS / "good_mlp.py"), "--train"], "--dataset"),
    ],
)
def test_bad_usage_exits_2_with_a_message_naming_the_problem(argv, needle, capsys):
    assert cli.main(argv) == 2
    assert needle in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", str(MODELS / "good_mlp.py"), "--runtime", "kata"])
    assert exc.value.code == 2


# docker-py's UnixHTTPConnection does not close its socket when connect() fails.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_no_engine_exits_3_with_how_to_fix(capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    code = cli.main(["check", str(MODELS / "good_mlp.py"), "--input-shape", "1,8,8", "--num-classes", "10"])
    assert code == 3
    err = capsys.readouterr().err
    assert "no Docker engine answers" in err and "scripts/setup.sh" in err
    gc.collect()  # collect docker-py's leaked socket while the filter above applies


@pytest.mark.parametrize("command", ["run", "resume", "report", "ls", "check", "bench", "doctor", "image", "cleanup",
                                     "data"])
def test_every_command_has_readable_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage: researcher" in text and "{'option_strings'" not in text


def test_ls_names_the_chosen_candidate_and_that_its_figure_is_test(tmp_path, capsys):
    from orchestrator.registry import Registry
    from tests.registry import factories as f

    with Registry.create(tmp_path / "r1", f.settings(), plots=False) as reg:
        f.add_passed(reg, 1.0)
        best = f.add_passed(reg, 3.0)
        reg.set_status("finished", "candidate budget spent")
        mean = reg.best().summary("accuracy").mean
    assert cli.main(["ls", str(tmp_path)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.endswith("best (chosen on selection; its test score)")
    assert row.startswith("r1 ") and row.endswith(f"{best} test accuracy {mean:.4f}")


def test_ls_says_when_the_chosen_candidate_is_a_final_training(tmp_path, capsys):
    from msgspec import structs

    from orchestrator.planning.types import FINAL_OF
    from orchestrator.registry import Registry
    from tests.registry import factories as f

    with Registry.create(tmp_path / "r1", f.settings(), plots=False) as reg:
        searched = f.add_passed(reg, 1.0)
        final = structs.replace(f.proposal(), ref="optuna:offline:final", params={FINAL_OF: searched})
        best = f.add_passed(reg, 3.0, proposed=final)
        reg.set_status("finished", "time budget spent")
        mean = reg.best().summary("accuracy").mean
    assert cli.main(["ls", str(tmp_path)]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.endswith(f"{best} (final of {searched}) test accuracy {mean:.4f}")
