"""Reports from a registry of realistic records: content, escaping, inlined images."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest

from evaluator.metrics import score_seeds
from orchestrator.planning.types import Target
from orchestrator.registry import EventRecord, LLMConfig, Registry, RunInfo
from orchestrator.report import write_reports
from orchestrator.report.content import running_seconds
from sandbox_image.protocol import FailureKind
from tests.registry import factories as f

HOSTILE = f.SOURCE + "# </code></pre><script>alert('pwned')</script>\n# ```` fence\n"
DATASET = {"name": "digits", "input_shape": [1, 8, 8], "num_classes": 10, "n_train": 1149,
           "n_val": 287, "n_test": 361, "content_hash": "feedc0ffee1234"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run: three passed candidates (the best with hostile source), failures, LLM calls."""
    run_dir = tmp_path_factory.mktemp("reports") / "run_report"
    with Registry.create(run_dir, f.settings(llm=LLMConfig(base_url="http://127.0.0.1:8000/v1", model="smollm2")), plots=False) as reg:
        reg.set_dataset(DATASET)
        f.add_passed(reg, 1.0)
        f.add_failed(reg, FailureKind.SHAPE_MISMATCH, "got (2, 12) <img src=x onerror=alert(1)>")
        f.add_passed(reg, 3.0, width=32, source=HOSTILE)
        f.add_failed(reg, FailureKind.TIMEOUT, "training exceeded 300 s")
        f.add_failed(reg, FailureKind.SHAPE_MISMATCH, "mat1 and mat2 shapes cannot be multiplied")
        f.add_passed(reg, 2.0, width=24)
        reg.record_llm_call(f.llm_call())
        reg.record_llm_call(f.llm_call(error="HTTP 500 <b>boom</b>"))
        reg.log_event("target_met", "accuracy reached the target")
        reg.set_status("finished", "target met")
    write_reports(run_dir)
    return run_dir


def _best(run_dir: Path):  # type: ignore[no-untyped-def]
    with Registry.open(run_dir, readonly=True) as reg:
        return reg.best()


def test_html_is_self_contained_with_inlined_images(run: Path) -> None:
    page = (run / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 4  # leaderboard, time to accuracy, confusion matrix, learning curves
    for uri in images:
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<script" not in page.lower() and "href=" not in page and "<link" not in page
    assert re.findall(r'src="(?!data:)', page) == []


def test_html_escapes_untrusted_text(run: Path) -> None:
    page = (run / "report.html").read_text()
    assert "&lt;/code&gt;&lt;/pre&gt;&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page
    assert "HTTP 500 &lt;b&gt;boom&lt;/b&gt;" in page


def test_reports_show_the_leaderboard_with_cis(run: Path) -> None:
    best = _best(run)
    test = best.summary("accuracy")  # reported: the test split's mean and interval
    for name in ("report.md", "report.html"):
        doc = (run / name).read_text()
        assert f"{test.mean:.4f}" in doc and f"{test.ci95_low:.4f}, {test.ci95_high:.4f}" in doc, name
        # ... and how it was chosen: on the selection split, whose figure is shown too
        assert f"{best.value('accuracy'):.4f}" in doc and "selection split" in doc and "decided nothing" in doc
        assert "Leaderboard" in doc and "95% CI" in doc
        assert "Target met" in doc if best.mean >= 0.9 else "Target not met" in doc
        assert ("It was chosen, and the run stopped, on" in doc) == ("Target met" in doc)
        assert "3 per candidate (seeds 0, 1, 2)" in doc
        assert "feedc0ffee1234" in doc and "Planner steps" in doc
        assert "a small CNN to start from" in doc  # rationale per step
    md = (run / "report.md").read_text()
    board = md[md.index("## Leaderboard"):md.index("## Best model")]
    ranks = re.findall(r"^\| (\d) \| (c\d+) \|", board, re.MULTILINE)
    assert [r for r, _ in ranks] == ["1", "2", "3"] and ranks[0][1] == best.id


def test_reports_show_the_forward_flops_the_sandbox_counted(run: Path) -> None:
    best = _best(run)
    assert (best.params, best.flops) == (32_000, 64_000)
    md, page = (run / "report.md").read_text(), (run / "report.html").read_text()
    board = md[md.index("## Leaderboard"):md.index("## Best model")]
    assert "| params | FLOPs/example |" in board and f"| {best.id} |" in board
    assert re.search(rf"^\| 1 \| {best.id} \| .* \| 32,000 \| 64 k \| ", board, re.MULTILINE), board
    assert "- parameters: 32,000; forward 64 kFLOPs per example; evaluation took" in md
    assert "<dt>parameters</dt><dd>32,000; forward 64 kFLOPs per example</dd>" in page


def test_failures_are_grouped_by_kind(run: Path) -> None:
    md = (run / "report.md").read_text()
    assert "### shape\\_mismatch (2)" in md and "### timeout (1)" in md
    assert md.index("shape\\_mismatch (2)") < md.index("timeout (1)")  # most common first
    page = (run / "report.html").read_text()
    assert "mat1 and mat2 shapes cannot be multiplied" in page


def test_llm_summary(run: Path) -> None:
    page = (run / "report.html").read_text()
    assert "LLM calls" in page and "240 / 80" in page  # prompt / completion tokens of 2 calls


def test_markdown_source_fence_cannot_be_closed_early(run: Path) -> None:
    md = (run / "report.md").read_text()
    block = re.search(r"^(`{5,})python\n(.*?)\n\1$", md, re.MULTILINE | re.DOTALL)
    assert block is not None and block.group(2) == HOSTILE.rstrip()
    outside = md.replace(block.group(0), "")
    assert "<script" not in outside and "<img" not in outside.replace("![", "")


def test_reports_rebuild_figures_from_the_registry_alone(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    for folder in ("candidates", "figures"):
        shutil.rmtree(copy / folder)
    (copy / "report.html").unlink()
    md, page = write_reports(copy)
    assert len(re.findall(r'<img src="data:image/png', page.read_text())) == 4  # leaderboard, time to accuracy, confusion matrix, learning curves
    for ref in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md.read_text()):
        assert (copy / ref).is_file(), ref


def test_reports_of_runs_without_results(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    Registry.create(empty, f.settings(), plots=False).close()
    md, page = write_reports(empty)
    assert "No candidate passed" in md.read_text() and "LLM calls" not in page.read_text()
    failed = tmp_path / "failed"
    with Registry.create(failed, f.settings(), plots=False) as reg:
        f.add_failed(reg)
        md, page = write_reports(failed)  # while the writer still holds the run
    assert "No candidate passed (1 failed)" in page.read_text()
    assert "shape\\_mismatch (1)" in md.read_text()


def test_a_one_seed_run_short_of_its_target_shows_no_spread_and_no_stop_on_the_target(tmp_path: Path) -> None:
    # one seed: no interval and no standard deviation (0.0000 would read as a perfectly steady model)
    rng = np.random.default_rng(3)
    y = rng.integers(0, len(f.CLASS_NAMES), f.N_TEST)
    logits = rng.normal(size=(f.N_TEST, len(f.CLASS_NAMES))).astype(np.float32)
    logits[np.arange(f.N_TEST), y] += 1.0
    one = score_seeds({0: logits}, y, f.CLASS_NAMES)
    run_dir = tmp_path / "one_seed"
    with Registry.create(run_dir, f.settings(seeds=(0,), target=Target(metric="accuracy", threshold=0.999)),
                         plots=False) as reg:
        cid = reg.add_candidate(f.proposal(), f.SOURCE)
        reg.mark_running(cid)
        # a check report from an image that counted no FLOPs (older, or a model the counter cannot follow)
        reg.finish_candidate(cid, check=msgspec.structs.replace(f.check(), flops=None), scores=one, selection=one,
                             curves=f.curves(), seconds=2.0)
        reg.set_status("finished", "time budget spent (600 s)")
    md, page = (p.read_text() for p in write_reports(run_dir))
    for doc in (md, page):
        assert "Target not met" in doc and "It was chosen on mean accuracy" in doc and "the run stopped" not in doc
        assert "1 per candidate (seed 0)" in doc
        assert "0.0000" not in doc  # neither in the leaderboard nor in the metric table
        assert "weights kept" not in doc  # no kept epoch was recorded: none is made up
        assert "FLOPs per example" not in doc  # nor a FLOP count
    board = md[md.index("## Leaderboard"):md.index("## Best model")]
    assert re.search(r"^\| 1 \| c001 \| [0-9.]+ \| [0-9.]+ \| n/a \(one seed\) \| n/a \(one seed\) \| 12,345 \| – \|",
                     board, re.MULTILINE), board


def test_wall_time_leaves_out_the_time_a_run_was_dead() -> None:
    def ev(t: float, kind: str) -> EventRecord:
        return EventRecord(seq=int(t), time=t, kind=kind, message="")

    run = RunInfo(settings=f.settings(), status="finished", started=100.0, finished=1060.0)
    events = [ev(100, "run_started"), ev(130, "candidate_finished"),  # killed after 30 s
              ev(1000, "interrupted"), ev(1000, "resumed"), ev(1050, "candidate_finished"),
              ev(1060, "run_finished")]
    assert running_seconds(run, events) == 30 + 60


CONTROLS = "\x1b[2J\x1b]0;pwned\x07 PASSED \x9b1A\rok\u202egnp.exe\u2066x\u2069"


def test_reports_show_control_and_bidi_characters_as_visible_escapes(tmp_path: Path) -> None:
    """``cat report.md`` fires no terminal escape; no bidi control reorders a source or a message."""
    trojan = f.SOURCE + 'access = "user\u202e \u2066# admin\u2069 \u2066"  # \x1b[8m\n'
    run_dir = tmp_path / "run_controls"
    with Registry.create(run_dir, f.settings(), plots=False) as reg:
        f.add_passed(reg, 3.0, source=trojan)
        f.add_failed(reg, FailureKind.FORWARD_ERROR, f"[bold]{CONTROLS}")
        reg.record_llm_call(f.llm_call(error=f"HTTP 500 {CONTROLS}"))
        reg.log_event("run_failed", CONTROLS)
    md, page = (p.read_bytes().decode() for p in write_reports(run_dir))  # no newline translation
    for doc in (md, page):
        for ch in ("\x1b", "\x07", "\x9b", "\r", "\u202e", "\u2066", "\u2069"):
            assert ch not in doc, repr(ch)
    # Markdown: backslashes escaped, so it renders as \x1b[2J...; CR is whitespace there, flattened.
    assert "\\\\x1b\\[2J\\\\x1b\\]0;pwned\\\\x07 PASSED \\\\x9b1A ok\\\\u202egnp.exe" in md
    assert "\\x1b[2J\\x1b]0;pwned\\x07 PASSED \\x9b1A\\x0dok\\u202egnp.exe" in page
    assert 'access = "user\\u202e \\u2066# admin\\u2069 \\u2066"  # \\x1b[8m' in md  # the fenced source
    assert 'access = &quot;user\\u202e \\u2066# admin\\u2069 \\u2066&quot;' in page


def test_time_to_accuracy_is_best_so_far_on_selection_against_wall_time(run: Path) -> None:
    from orchestrator.report.content import gather
    from orchestrator.report.figures import time_to_accuracy

    with Registry.open(run, readonly=True) as registry:
        data = gather(registry)
    points = time_to_accuracy(data)
    passed = [r for r in data.records if r.value("accuracy") is not None]
    assert len(points) == len(passed) >= 2
    assert [p.seconds for p in points] == sorted(p.seconds for p in points)
    selection = [p.selection for p in points]
    assert selection == [max(selection[: i + 1]) for i in range(len(selection))]  # never goes down
    assert points[-1].selection == data.best.value("accuracy") and points[-1].test == data.best.test_value("accuracy")
    assert (run / "figures" / "time_to_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "time_to_accuracy.png" in (run / "report.md").read_text()


def test_training_line_says_when_a_candidate_never_stops_early() -> None:
    from orchestrator.report import text

    record = _record_with(schedule="constant")
    assert "patience=5" in text.training(record)  # the recipe's default for a constant lr
    record = _record_with(schedule="onecycle")
    assert "no early stop" in text.training(record) and "patience" not in text.training(record)
    record = _record_with(schedule="cosine", fit_val=True)
    assert "no early stop on train+val" in text.training(record)
    assert "patience=3" in text.training(_record_with(schedule="cosine", patience=3))  # an explicit one as is


def _record_with(**train):  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from msgspec import structs

    proposal = f.proposal()
    return SimpleNamespace(proposal=structs.replace(proposal, train=structs.replace(proposal.train, **train)))


def test_the_best_model_says_which_epochs_weights_each_seed_kept(run: Path) -> None:
    md, page = (run / "report.md").read_text(), (run / "report.html").read_text()
    kept = "epoch 4 of 4 for every seed (the highest val accuracy)"
    assert f"- weights kept: {kept}" in md
    assert f"<dt>weights kept</dt><dd>{kept}</dd>" in page


def test_kept_epochs_that_differ_are_given_per_seed() -> None:
    from evaluator.dynamics import analyse
    from orchestrator.registry.records import CandidateRecord
    from orchestrator.report import text

    c = f.curves(6)
    record = CandidateRecord(id="c001", seq=1, status="passed", proposal=f.proposal(), source=f.SOURCE, created=0.0,
                             curves=c, dynamics=analyse(c, kept={0: 6, 1: 4, 2: 9}))  # 9: not an epoch
    assert text.kept(record) == "seed 0: epoch 6 of 6, seed 1: epoch 4 of 6 (the highest val accuracy)"


def test_the_leaderboard_marks_a_final_training_with_the_candidate_it_retrained(tmp_path: Path) -> None:
    from msgspec import structs

    from orchestrator.planning.types import FINAL_OF

    run_dir = tmp_path / "run_final"
    with Registry.create(run_dir, f.settings(), plots=False) as reg:
        reg.set_dataset(DATASET)
        searched = f.add_passed(reg, 2.0)
        base = f.proposal()
        final = structs.replace(base, ref="optuna:offline:final", parent=searched,
                                params={FINAL_OF: searched, "epochs": 12, "base_epochs": 4},
                                train=structs.replace(base.train, epochs=12, fit_val=True))
        retrained = f.add_passed(reg, 3.0, proposed=final)
        # a search candidate whose params merely name a candidate is not a final training
        f.add_passed(reg, 1.0, proposed=structs.replace(base, params={FINAL_OF: searched}))
        reg.set_status("finished", "budget spent")
    write_reports(run_dir)
    md, page = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    board = md[md.index("## Leaderboard"):md.index("## Best model")]
    assert f"| {retrained} (final of {searched}) |" in board
    assert f"<code>{retrained}</code> <small>final of <code>{searched}</code></small>" in page
    assert board.count("(final of ") == 1
    # it is the best here: the outcome and the best model's heading say what it is too
    assert f"candidate {retrained} (final of {searched}) reached mean test accuracy" in md
    assert f"## Best model: {retrained} (final of {searched})" in md
    assert f"<h2>Best model: <code>{retrained}</code> <small>final of <code>{searched}</code></small></h2>" in page
    assert page.count("<small>final of ") == 2
