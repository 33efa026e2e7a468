"""`researcher data get`, `--download`, and the goal picking the dataset, through `cli.main`.

Downloads go to the loopback mirror of ``tests/evaluator/test_download.py``; the
catalogue's md5s are swapped for its files' (``torchvision_sources`` patched).
No sandbox starts: ``start_run`` and ``run_check`` are replaced by recorders.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluator import download
from evaluator.datasets import load_dataset
from orchestrator import cli, research
from tests.evaluator.test_download import Mirror, closed_port, mirror, tree  # noqa: F401 - mirror is a fixture

CIFAR_GOAL = "Design a small CIFAR-10 CNN targeting >70% accuracy"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty XDG cache and no RESEARCHER_* variables from the caller's shell."""
    import os

    for name in [n for n in os.environ if n.startswith("RESEARCHER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "pytorch-researcher" / "data"


@pytest.fixture
def served(mirror: Mirror, monkeypatch: pytest.MonkeyPatch) -> Mirror:  # noqa: F811 - the imported fixture
    """The mirror, with the CLI's catalogue holding its files' md5s."""
    monkeypatch.setattr(download, "torchvision_sources", lambda: mirror.sources)
    return mirror


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list:
    """The settings `researcher run` would start with (no run directory, no sandbox)."""
    calls: list = []
    monkeypatch.setattr(research, "start_run", lambda settings, **kw: calls.append(settings) or 0)
    return calls


# ------------------------------------------------------------------ researcher data get


def test_data_get_prints_where_the_data_went(served: Mirror, cache: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "datasets"
    assert cli.main(["data", "get", "CIFAR-10", "--data-dir", str(target), "--mirror", served.url]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"cifar10 is in {target}",
                                f"use it with: researcher run --dataset cifar10 --data-dir {target}"]
    assert f"researcher: downloading {served.url}/cifar10/cifar-10-python.tar.gz" in err
    assert load_dataset("cifar10", target).num_classes == 10
    assert not cache.exists()


def test_data_get_defaults_to_the_cache(served: Mirror, cache: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RESEARCHER_DATA_MIRROR", served.url)
    assert cli.main(["data", "get", "fashion_mnist"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"fashion_mnist is in {cache}"
    assert "the cache is searched when --data-dir is not given" in out
    assert len(load_dataset("fashion_mnist", cache).y) == 30


def test_data_get_with_a_bad_checksum_exits_2_and_names_the_file(served: Mirror, cache: Path, tmp_path, capsys) -> None:
    served.corrupt("mnist/train-labels-idx1-ubyte.gz")
    assert cli.main(["data", "get", "mnist", "--data-dir", str(tmp_path / "d"), "--mirror", served.url]) == 2
    err = capsys.readouterr().err
    assert "data error: checksum mismatch for train-labels-idx1-ubyte.gz" in err and "expected md5" in err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("argv", "needle"), [
    (["data", "get", "digits"], "'digits' cannot be downloaded"),
    (["data", "get", "imagenet"], "unknown dataset 'imagenet'"),
    (["data", "get", "mnist", "--mirror", "127.0.0.1:8000"], "must be an http:// or https:// URL"),
])
def test_data_get_usage_errors_exit_2(cache: Path, argv: list[str], needle: str, capsys) -> None:
    assert cli.main(argv) == 2
    assert needle in capsys.readouterr().err


def test_data_get_from_an_unreachable_mirror_exits_2(cache: Path, capsys) -> None:
    assert cli.main(["data", "get", "cifar100", "--mirror", f"http://127.0.0.1:{closed_port()}"]) == 2
    assert "cifar-100-python.tar.gz: cannot connect" in capsys.readouterr().err
    assert not cache.exists()


@pytest.mark.parametrize("argv", [["data", "--help"], ["data", "get", "--help"]])
def test_data_help(argv: list[str], capsys) -> None:
    from evaluator.datasets import DOWNLOADABLE

    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: researcher data" in out
    if "get" in argv:
        assert all(name in out for name in DOWNLOADABLE)


# ------------------------------------------------------------------ the goal picks the data


def test_the_cifar10_example_picks_cifar10_and_fails_clearly_where_it_is_absent(cache: Path, started, capsys) -> None:
    assert cli.main(["run", "--goal", CIFAR_GOAL]) == 2
    err = capsys.readouterr().err
    assert "the goal names CIFAR-10 (cifar10), which is not available here" in err
    assert "--data-dir DIR" in err and "cifar-10-batches-py/" in err  # torchvision's layout
    assert "researcher data get cifar10" in err and "--download" in err
    assert started == []


def test_goal_and_flag_that_disagree_exit_2_naming_both(cache: Path, started, capsys) -> None:
    assert cli.main(["run", "--goal", CIFAR_GOAL, "--dataset", "digits"]) == 2
    assert "the goal names CIFAR-10 (cifar10) but --dataset is 'digits'" in capsys.readouterr().err
    assert started == []


def test_run_download_fetches_the_goals_dataset_into_the_cache(served: Mirror, cache: Path, started, capsys) -> None:
    assert cli.main(["run", "--goal", CIFAR_GOAL, "--download", "--mirror", served.url]) == 0
    settings = started[0]
    assert (settings.dataset, settings.data_dir, settings.dataset_from) == ("cifar10", str(cache), "goal")
    assert settings.target.threshold == 0.7
    assert "note: the goal names CIFAR-10 (cifar10): training on it" in capsys.readouterr().err
    # a later run finds it in the cache without --download
    assert cli.main(["run", "--goal", CIFAR_GOAL]) == 0
    assert started[1].data_dir == str(cache)


def test_the_default_goal_keeps_training_on_digits_and_names_no_dataset(cache: Path, started) -> None:
    assert cli.main(["run"]) == 0
    assert cli.main(["run", "--dataset", "iris"]) == 0  # the default goal's "digits" is not the user's
    assert cli.main(["run", "--goal", "a digits classifier"]) == 0
    assert cli.main(["run", "--goal", "F1 above 0.9"]) == 0
    assert cli.main(["run", "--goal", "F1 above 0.9", "--dataset", "wine"]) == 0
    assert [(s.dataset, s.data_dir, s.dataset_from) for s in started] == [
        ("digits", None, "default"), ("iris", None, "flag"), ("digits", None, "goal"), ("digits", None, "default"),
        ("wine", None, "flag")]
    assert cli.main(["run", "--goal", "a digits classifier", "--dataset", "iris"]) == 2  # the user's goal: it counts


def test_the_goals_fashion_mnist_comes_from_debian_without_a_download(cache: Path, started) -> None:
    assert cli.main(["run", "--goal", "a fashion mnist CNN above 93% accuracy"]) == 0
    assert (started[0].dataset, started[0].data_dir) == ("fashion_mnist", None)


def test_check_train_download_fetches_before_any_sandbox(served: Mirror, tmp_path: Path, cache: Path,
                                                         monkeypatch) -> None:
    import orchestrator.check

    class Stop(Exception):
        pass

    requests = []

    def record(request, *args, **kwargs):
        requests.append(request)
        raise Stop

    monkeypatch.setattr(orchestrator.check, "run_check", record)
    with pytest.raises(Stop):
        cli.main(["check", "model.py", "--train", "--dataset", "mnist", "--download", "--mirror", served.url,
                  "--data-dir", str(tmp_path / "d")])
    assert requests[0].dataset == "mnist" and requests[0].data_dir == str(tmp_path / "d")
    assert tree(tmp_path / "d")[:2] == ["MNIST", "MNIST/raw"]


def test_check_download_needs_a_dataset(cache: Path, capsys) -> None:
    assert cli.main(["check", "model.py", "--input-shape", "1,8,8", "--num-classes", "10", "--download"]) == 2
    assert "--download needs --dataset NAME" in capsys.readouterr().err
