"""The Python API (orchestrator.api): the seed's config form, saving, LLM settings, and the sandbox paths."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import orchestrator
from orchestrator import (
    LLMSettings,
    ModelConfig,
    ModelFileExists,
    RunResult,
    assemble_from_config,
    assemble_model_code,
    check_model,
    normalize_config,
    run,
    save_model_code,
    summarize_model,
)
from orchestrator.exceptions import UsageError
from orchestrator.planning import types as t
from orchestrator.planning.assembler import analyze
from tests.fakes.fake_llm_server import FakeLLMServer, Reply

ROOT = Path(__file__).resolve().parents[2]
HEAD = {"type": "Linear", "out_features": 10}


def cnn(**overrides) -> ModelConfig:
    layers = [
        {"type": "Conv2d", "in_channels": 1, "out_channels": 8, "kernel_size": 3},
        {"type": "BatchNorm2d", "num_features": 8},
        {"type": "ReLU"},
        {"type": "MaxPool2d", "kernel_size": 2},
        {"type": "Dropout", "p": 0.25},
        {"type": "Flatten"},
        {"type": "Linear", "in_features": 128, "out_features": 32},
        {"type": "ReLU"},
        HEAD,
    ]
    return ModelConfig(**({"class_name": "SmallCNN", "input_shape": (1, 8, 8), "layers": layers} | overrides))


# ------------------------------------------------------------------ normalisation


def test_the_seed_form_becomes_the_typed_config_with_per_layer_shapes():
    norm = normalize_config(cnn())
    assert norm.class_name == "SmallCNN" and norm.input_shape == (1, 8, 8) and norm.num_classes == 10
    assert norm.config.layers == (t.Conv2d(out_channels=8, kernel_size=3, stride=1), t.BatchNorm(), t.ReLU(),
                                  t.MaxPool(kernel=2), t.Dropout(p=0.25), t.Flatten(), t.Linear(out_features=32),
                                  t.ReLU())
    assert [s.output_shape for s in norm.layer_shapes] == [
        (8, 8, 8), (8, 8, 8), (8, 8, 8), (8, 4, 4), (8, 4, 4), (128,), (32,), (32,), (10,)]
    assert [s.index for s in norm.layer_shapes] == list(range(9))


def test_a_dict_pairs_tuples_same_padding_and_global_pooling_are_accepted():
    cfg = {"class_name": "Tiny", "input_shape": [3, 16, 16], "layers": [
        {"type": "Conv2d", "out_channels": 4, "kernel_size": (5, 5), "stride": [2, 2], "padding": "same"},
        {"type": "GELU"}, {"type": "AvgPool2d", "kernel_size": 2, "stride": 1},
        {"type": "AdaptiveAvgPool2d", "output_size": (1, 1)}, {"type": "Flatten"},
        {"type": "BatchNorm1d", "num_features": 4}, {"type": "Dropout"},
        {"type": "Linear", "in_features": 4, "out_features": 3}]}
    norm = normalize_config(cfg)
    assert norm.config.layers[0] == t.Conv2d(out_channels=4, kernel_size=5, stride=2, padding=None)
    assert norm.config.layers[-1] == t.Dropout(p=0.5)  # torch's default
    assert norm.layer_shapes[0].output_shape == (4, 8, 8) and norm.layer_shapes[3].output_shape == (4,)
    assert normalize_config({"input_shape": (4,), "layers": [HEAD]}).class_name == "Net"


@pytest.mark.parametrize(("layers", "match"), [
    ([{"type": "Conv3d", "out_channels": 3}, HEAD], r"layers\[0\]: unknown layer type 'Conv3d'; accepted: Conv2d, "),
    ([{"type": "conv2d", "out_channels": 3}, HEAD], r"did you mean 'Conv2d'"),
    ([{"type": "Conv2d"}, HEAD], r"layers\[0\] Conv2d: missing out_channels; accepted: in_channels, out_channels"),
    ([{"type": "Conv2d", "out_channels": 8, "dilation": 2}, HEAD], r"layers\[0\] Conv2d: unknown field\(s\) dilation"),
    ([{"type": "Conv2d", "in_channels": 3, "out_channels": 8}, HEAD],
     r"layers\[0\] Conv2d: in_channels=3 does not match the previous layer's output \(1, 8, 8\).*in_channels=1"),
    ([{"type": "Conv2d", "out_channels": 8}, {"type": "BatchNorm2d", "num_features": 4}, HEAD],
     r"layers\[1\] BatchNorm2d: num_features=4 does not match .*num_features=8"),
    ([{"type": "Flatten"}, {"type": "Linear", "in_features": 60, "out_features": 10}],
     r"layers\[1\] Linear: in_features=60 does not match .*\(64,\).*in_features=64"),
    ([{"type": "Flatten"}, {"type": "Linear", "in_features": 60, "out_features": 5}, HEAD],
     r"layers\[1\] Linear: in_features=60"),
    ([{"type": "Conv2d", "out_channels": 8}, {"type": "ReLU"}], r"layers\[1\] is ReLU, but the last layer must be"),
    ([{"type": "Conv2d", "out_channels": 0}, HEAD], r"layers\[0\] Conv2d: .*out_channels.*channels and features 1"),
    ([{"type": "Conv2d", "out_channels": "8"}, HEAD], r"layers\[0\] Conv2d: Expected `int`, got `str`"),
    ([{"type": "Flatten"}, {"type": "Conv2d", "out_channels": 4}, HEAD],
     r"layers\[1\] Conv2d: conv2d needs \(C, H, W\) input"),
    ([{"type": "MaxPool2d", "kernel_size": 8}, {"type": "MaxPool2d", "kernel_size": 2}, HEAD],
     r"layers\[1\] MaxPool2d: maxpool .* cannot apply to a 1x1 map"),
    ([{"type": "Conv2d", "out_channels": 8, "padding": 3}, HEAD], r"layers\[0\] Conv2d: conv2d padding 3 exceeds"),
    ([{"type": "MaxPool2d", "kernel_size": (2, 3)}, HEAD], r"layers\[0\] MaxPool2d: kernel_size=\(2, 3\) is not square"),
    ([{"type": "AdaptiveAvgPool2d", "output_size": 2}, HEAD], r"layers\[0\] AdaptiveAvgPool2d: output_size=2"),
    ([{"type": "BatchNorm1d"}, HEAD], r"layers\[0\] BatchNorm1d does not fit its input \(1, 8, 8\)"),
    (["relu", HEAD], r"layers\[0\] is str, not a dict"),
    ([{"type": "Linear", "out_features": 1}], r"layers\[0\] Linear: out_features=1 is the number of classes"),
    ([], r"layers is empty"),
])
def test_what_cannot_be_normalised_names_the_layer_the_problem_and_what_is_accepted(layers, match):
    with pytest.raises(UsageError, match=match):
        normalize_config(ModelConfig(class_name="N", input_shape=(1, 8, 8), layers=layers))


@pytest.mark.parametrize(("cfg", "match"), [
    ({"layers": [HEAD]}, "input_shape is needed"),
    ({"input_shape": (1, 8), "layers": [HEAD]}, r"input_shape \(1, 8\) must be \(C, H, W\)"),
    ({"class_name": "my net", "input_shape": (4,), "layers": [HEAD]}, "class_name 'my net' must be a Python identifier"),
    ({"input_shape": (4,), "layers": [HEAD], "docs": "x"}, r"unknown config field\(s\) \['docs'\]"),
    ({"class_name": "BasicBlock", "input_shape": (4,), "layers": [HEAD]}, "class_name 'BasicBlock'"),
])
def test_bad_config_fields_are_usage_errors(cfg, match):
    with pytest.raises(UsageError, match=match):
        assemble_model_code(cfg)


# ------------------------------------------------------------------ assemble and save


def test_assemble_renders_the_typed_config_and_save_refuses_to_overwrite(tmp_path):
    src = assemble_model_code(cnn())
    assert src == assemble_model_code(cnn())
    assert [n.name for n in ast.parse(src).body if isinstance(n, ast.ClassDef)] == ["SmallCNN"]
    path = save_model_code(tmp_path / "deep" / "cnn.py", src, overwrite=False)
    assert path.read_text() == src
    with pytest.raises(ModelFileExists, match="already exists and overwrite=False") as exc:
        save_model_code(path, "x = 1\n", overwrite=False)
    assert isinstance(exc.value, FileExistsError) and isinstance(exc.value, UsageError)
    assert path.read_text() == src
    save_model_code(path, "x = 1\n")  # the seed's default: overwrite
    assert path.read_text() == "x = 1\n"


def test_assemble_from_config_without_llm_saves_the_assemblers_source(tmp_path):
    result = assemble_from_config(cnn(), tmp_path / "m.py")
    assert result.via == "deterministic" and result.attempts == 0 and result.class_name == "SmallCNN"
    assert result.path.read_text() == result.source == assemble_model_code(cnn())
    with pytest.raises(ModelFileExists):
        assemble_from_config(cnn(), tmp_path / "m.py", overwrite=False)
    with pytest.raises(UsageError, match="use_llm=True needs llm_kwargs"):
        assemble_from_config(cnn(), tmp_path / "n.py", use_llm=True)


# ------------------------------------------------------------------ LLM settings


def test_llm_settings_defaults_and_their_effect_on_the_client():
    settings = LLMSettings(base_url="http://127.0.0.1:9/v1", model="m")
    assert (settings.http_timeout, settings.max_retries, settings.retry_backoff, settings.api_key) == (300.0, 4, 0.5, None)
    with settings.client() as client:
        assert client.timeout == 300.0 and client.retry.max_retries == 4 and client.retry.base_s == 0.5
    custom = LLMSettings.of({"base_url": "http://127.0.0.1:9", "model": "m", "http_timeout": 7,
                             "max_retries": 1, "retry_backoff": 0.0, "api_key": "sk-secret"})
    assert "sk-secret" not in repr(custom)
    with custom.client() as client:
        assert client.timeout == 7 and client.retry.max_retries == 1 and client.retry.base_s == 0.0


@pytest.mark.parametrize(("fields", "match"), [
    ({"http_timeout": 0}, "http_timeout must be > 0"),
    ({"max_retries": -1}, "max_retries must be an integer >= 0"),
    ({"retry_backoff": -0.1}, "retry_backoff must be >= 0"),
    ({"base_url": "ftp://h/v1"}, "must look like http://HOST:PORT/v1"),
    ({"timeout": 3}, r"unknown LLM setting\(s\) \['timeout'\]"),
])
def test_bad_llm_settings_are_usage_errors(fields, match):
    with pytest.raises(UsageError, match=match):
        LLMSettings.of({"base_url": "http://127.0.0.1:9/v1", "model": "m"} | fields)


def test_the_run_flags_carry_the_retry_settings_into_the_settings_and_the_client(monkeypatch):
    from orchestrator import cli, research
    from orchestrator.planning.types import PlannerFacts, Target

    args = cli.build_parser().parse_args(["run", "--llm-base-url", "http://127.0.0.1:9/v1",
                                          "--llm-max-retries", "2", "--llm-retry-backoff", "1.5"])
    settings = research.settings_from_args(args, Target())
    assert settings.llm.max_retries == 2 and settings.llm.retry_backoff_s == 1.5
    defaults = research.settings_from_args(
        cli.build_parser().parse_args(["run", "--llm-base-url", "http://127.0.0.1:9/v1"]), Target())
    assert defaults.llm.max_retries == 4 and defaults.llm.retry_backoff_s == 0.5
    monkeypatch.setenv("RESEARCHER_LLM_MAX_RETRIES", "0")
    assert cli.build_parser().parse_args(["run"]).llm_max_retries == 0
    with pytest.raises(UsageError, match="--llm-max-retries must be >= 0"):
        research.settings_from_args(cli.build_parser().parse_args(["run", "--llm-max-retries", "-1"]), Target())

    class Registry:
        record_llm_call = None

    facts = PlannerFacts(name="digits", input_shape=(1, 8, 8), num_classes=10)
    planner = research.make_planner(settings, facts, Registry(), research.Secrets())
    try:
        assert planner.client.retry.max_retries == 2 and planner.client.retry.base_s == 1.5
    finally:
        planner.close()


# ------------------------------------------------------------------ use_llm against the fake server


def test_use_llm_writes_the_llms_source_after_a_correction(tmp_path):
    good = assemble_model_code(cnn()).replace("class SmallCNN", "class FromLLM")
    reply = {"rationale": "as configured", "class_name": "FromLLM", "python": good,
             "train": {"epochs": 1, "batch_size": 64, "lr": 0.001, "optimizer": "adamw"}}
    with FakeLLMServer([Reply.json(reply | {"python": "def broken(:"}), Reply.fenced(reply)]) as server:
        result = assemble_from_config(cnn(), tmp_path / "llm.py", use_llm=True,
                                      llm_kwargs={"base_url": server.base_url, "model": "fake", "max_retries": 0})
        requests = server.chat_requests()
    assert (result.via, result.attempts, result.class_name, result.llm_error) == ("llm", 2, "FromLLM", "")
    assert result.path.read_text() == good
    task = requests[0].body["messages"][1]["content"]
    assert '"type": "Conv2d"' in task and "Name the class SmallCNN" in task and "classes: 10" in task
    assert "cannot be used" in requests[1].body["messages"][-1]["content"]


def test_use_llm_falls_back_to_the_assembler_when_the_llm_is_down(tmp_path):
    with FakeLLMServer([Reply.error(503)]) as server:
        settings = LLMSettings(base_url=server.base_url, model="fake", max_retries=0, http_timeout=5)
        result = assemble_from_config(cnn(), tmp_path / "m.py", use_llm=True, llm_kwargs=settings)
    assert result.via == "deterministic" and "LLM" in result.llm_error and "503" in result.llm_error
    assert result.path.read_text() == assemble_model_code(cnn())


def test_the_api_is_reexported_from_the_package():
    from orchestrator import api

    assert set(api.__all__) <= set(orchestrator.__all__)
    assert all(getattr(orchestrator, name) is getattr(api, name) for name in api.__all__)


# ------------------------------------------------------------------ through the sandbox


@pytest.mark.docker
def test_summary_of_a_rendered_config_matches_the_assembler(docker_client, tmp_path):
    path = save_model_code(tmp_path / "cnn.py", assemble_model_code(cnn()))
    summary = summarize_model(path, input_shape=(1, 8, 8), num_classes=10, config=cnn())
    norm = normalize_config(cnn())
    assert summary.ok and summary.class_name == "SmallCNN"
    analysis = analyze(norm.config, input_shape=(1, 8, 8), num_classes=10)
    assert summary.params == analysis.params
    # the sandbox's FLOP count (torch's FlopCounterMode) is the trusted assembler's: 2 FLOPs per MAC
    assert summary.flops == 2 * analysis.macs == 18_048
    assert summary.output_shape == (2, 10)
    assert summary.layers == norm.layer_shapes
    from_config = summarize_model(cnn())  # rendered into a temporary file first
    assert from_config.params == summary.params and from_config.layers == summary.layers
    assert from_config.flops == summary.flops


@pytest.mark.docker
def test_a_failing_model_is_a_summary_with_its_failure(docker_client, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\n\nclass Net(torch.nn.Module):\n    def forward(self, x):\n        return x\n")
    summary = summarize_model(bad, dataset="digits")
    assert not summary.ok and summary.params is None and summary.failure.kind.value == "shape_mismatch"


@pytest.mark.docker
def test_check_and_train_the_example_on_digits(docker_client):
    example = ROOT / "examples" / "digits_cnn.py"
    checked = check_model(example, dataset="digits")
    assert checked.result.failure is None and checked.result.check.output_shape == (2, 10)
    assert checked.result.check.flops == 2_660_864  # its two convolutions and two linears, per example
    trained = check_model(example, dataset="digits", train=True, epochs=2)
    assert trained.result.failure is None, trained.result.failure
    assert trained.scores.metrics["accuracy"].mean > 0.5


@pytest.mark.docker
def test_run_returns_the_typed_summary_of_a_one_candidate_run(docker_client, tmp_path):
    result = run("digits classifier", max_candidates=1, seeds=1, runs_dir=tmp_path / "runs", name="api")
    assert isinstance(result, RunResult)
    assert result.run_dir == tmp_path / "runs" / "api" and result.status == "finished"
    assert result.report.is_file() and (result.run_dir / "report.md").is_file()
    assert result.n_candidates == 1 and result.metric == "accuracy"
    assert result.best is not None and result.n_passed == 1
    assert result.best.selection.n_seeds == 1 and result.best.selection.ci95_low is None
    assert 0.0 <= result.best.test.mean <= 1.0 and result.best.source_path.is_file()
    assert result.best.final_of is None  # one candidate: no final training
    assert "max_candidates" in result.stop_reason or "candidate" in result.stop_reason


def test_run_result_says_when_the_best_is_a_final_training(tmp_path):
    from msgspec import structs

    from orchestrator import run_result
    from orchestrator.registry import Registry
    from tests.registry import factories as f

    with Registry.create(tmp_path / "run", f.settings(), plots=False) as reg:
        searched = f.add_passed(reg, 2.0)
        final = structs.replace(f.proposal(), ref="optuna:offline:final", params={t.FINAL_OF: searched})
        retrained = f.add_passed(reg, 3.0, proposed=final)
        reg.set_status("finished", "budget spent")
    best = run_result(tmp_path / "run").best
    assert best is not None and (best.id, best.final_of) == (retrained, searched)
