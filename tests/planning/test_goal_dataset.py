"""The dataset a goal names, and how it is settled against --dataset."""

from __future__ import annotations

import pytest

from orchestrator.exceptions import UsageError
from orchestrator.planning.goal import DatasetChoice, choose_dataset, datasets_named
from orchestrator.research import DEFAULT_GOAL

SPELLINGS = [
    ("Design a small CIFAR-10 CNN targeting >70% accuracy", "cifar10"),
    ("a cifar10 resnet", "cifar10"),
    ("CIFAR 10 with at least 90% accuracy", "cifar10"),
    ("beat 60% on CIFAR", "cifar10"),  # a bare CIFAR is CIFAR-10
    ("cifar-100 fine labels", "cifar100"),
    ("CIFAR100 resnet", "cifar100"),
    ("CIFAR 100", "cifar100"),
    ("fashion mnist above 93%", "fashion_mnist"),
    ("FashionMNIST", "fashion_mnist"),
    ("Fashion-MNIST CNN", "fashion_mnist"),
    ("fashion_mnist", "fashion_mnist"),
    ("an F-MNIST classifier", "fashion_mnist"),
    ("fmnist", "fashion_mnist"),
    ("Zalando's article images", "fashion_mnist"),
    ("MNIST with 99% accuracy", "mnist"),
    ("mnist", "mnist"),
    ("MNIST handwritten digits", "mnist"),  # the digits are MNIST's
    ("breast-cancer AUROC above 0.99", "breast_cancer"),
    ("breast cancer", "breast_cancer"),
    ("Breast_Cancer", "breast_cancer"),
    ("handwritten digits", "digits"),
    ("iris classifier with at least 99% accuracy", "iris"),
    ("classify wines", "wine"),
    (DEFAULT_GOAL, "digits"),
]


@pytest.mark.parametrize(("goal", "name"), SPELLINGS)
def test_each_spelling_names_its_dataset(goal: str, name: str) -> None:
    assert datasets_named(goal) == (name,)
    assert choose_dataset(goal, None) == DatasetChoice(name, "goal", choose_dataset(goal, None).note)


@pytest.mark.parametrize("goal", ["train a small CNN", "use 50% dropout", "a digital twin", "K-MNIST", "kmnist",
                                  "EMNIST letters", "irises", "cifar10000", ""])
def test_no_known_dataset_is_named(goal: str) -> None:
    assert datasets_named(goal) == ()
    assert choose_dataset(goal, None) == DatasetChoice("digits", "default")


def test_mnist_is_not_found_inside_fashion_mnist_nor_cifar_10_inside_cifar_100() -> None:
    assert datasets_named("Fashion-MNIST and fashion mnist and FashionMNIST") == ("fashion_mnist",)
    assert datasets_named("cifar-100 and CIFAR100") == ("cifar100",)
    assert datasets_named("Fashion-MNIST, a drop-in replacement for MNIST") == ("fashion_mnist", "mnist")


@pytest.mark.parametrize(("goal", "flag", "name"), [
    ("Design a small CIFAR-10 CNN", "cifar10", "cifar10"),
    ("Design a small CIFAR-10 CNN", "CIFAR-10", "cifar10"),
    ("fashion mnist above 93%", "fashion-mnist", "fashion_mnist"),
    ("F1 above 0.9", "wine", "wine"),  # the goal names none: the flag decides
    ("Fashion-MNIST, a drop-in replacement for MNIST", "mnist", "mnist"),  # the flag picks one of the two
])
def test_a_flag_that_agrees_wins(goal: str, flag: str, name: str) -> None:
    assert choose_dataset(goal, flag) == DatasetChoice(name, "flag")


def test_a_flag_that_disagrees_is_a_usage_error_naming_both() -> None:
    with pytest.raises(UsageError) as exc:
        choose_dataset("Design a small CIFAR-10 CNN targeting >70% accuracy", "digits")
    assert "the goal names CIFAR-10 (cifar10) but --dataset is 'digits'" in str(exc.value)


def test_two_datasets_in_the_goal_without_a_flag_ask_for_one() -> None:
    with pytest.raises(UsageError, match=r"several datasets \(iris \(iris\) and wine \(wine\)\); choose one with --dataset"):
        choose_dataset("iris or wine", None)


def test_your_own_files_may_hold_what_the_goal_names() -> None:
    choice = choose_dataset("CIFAR-10 as PNGs", "imagefolder")
    assert (choice.name, choice.origin) == ("imagefolder", "flag")
    assert "the goal names CIFAR-10 (cifar10)" in choice.note


def test_an_unknown_flag_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown dataset 'imagenet'"):
        choose_dataset("anything", "imagenet")


def test_the_default_goal_names_the_dataset_the_run_trains_on():
    from orchestrator.research import default_goal_for

    assert default_goal_for("digits") == DEFAULT_GOAL
    goal = default_goal_for("fashion_mnist")
    assert goal.startswith("fashion_mnist classifier") and "%" not in goal and "digits" not in goal
    from orchestrator.planning.goal import choose_dataset

    assert choose_dataset(goal, None).name == "fashion_mnist"  # a resumed or re-read goal picks the same data


@pytest.mark.parametrize(("argv", "goal", "threshold"), [
    ([], DEFAULT_GOAL, 0.98),  # the built-in default keeps its target
    (["--dataset", "digits"], DEFAULT_GOAL, 0.98),
    # --dataset alone states no target: 98% is out of reach on Fashion-MNIST or CIFAR-10, and a report
    # saying "Target not met" of a target nobody set misleads; the run spends its budget on the best
    (["--dataset", "fashion_mnist"], "fashion_mnist classifier with the best accuracy within the budget", None),
    (["--dataset", "iris"], "iris classifier with the best accuracy within the budget", None),
    (["--dataset", "iris", "--target", "accuracy=0.9"],
     "iris classifier with the best accuracy within the budget", 0.9),
    (["--goal", "an MNIST classifier above 99% accuracy"], "an MNIST classifier above 99% accuracy", 0.99),
])
def test_a_run_records_the_goal_and_target_its_flags_mean(argv, goal, threshold):
    from orchestrator import cli, research

    args = cli.build_parser().parse_args(["run", *argv])
    choice = research.dataset_choice(args)
    settings = research.settings_from_args(args, research.run_target(args.target, args, choice), dataset=choice)
    assert (settings.goal, settings.target.threshold) == (goal, threshold)
    assert settings.target.metric == "accuracy"


def test_the_python_api_reads_the_same_default_goal_and_target():
    from orchestrator.api import _run_settings

    settings, choice = _run_settings(None, dataset="wine", data_dir=None, target=None, name="", max_candidates=3,
                                     time_budget_s=None, seeds=1, parallel=1, search_seed=0, llm=None,
                                     llm_mode="config", device="cpu", runtime="", keep=False)
    assert choice.name == "wine" and settings.target.threshold is None
    assert settings.goal == "wine classifier with the best accuracy within the budget"
