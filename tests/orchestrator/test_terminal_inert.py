"""Worker-, model- and LLM-controlled text reaches the terminal inert, at every sink.

The hostile text clears the screen and homes the cursor, prints a fake
``PASSED``, sets the window title, carries rich markup and a hyperlink tag, a
one-byte CSI and a right-to-left override. What must come out: no raw control
or bidi character, and the markup printed literally.
"""

from __future__ import annotations

import json
import time
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from orchestrator.check import CheckOutcome, CheckRequest, print_outcome
from orchestrator.doctor import Finding, print_table
from orchestrator.live import LiveView
from orchestrator.planning.types import ModelConfig
from orchestrator.registry import Registry
from orchestrator.research import _print_summary
from orchestrator.sandbox.runner import JobResult
from sandbox_image.protocol import Failure, FailureKind, Stage
from tests.registry import factories as f

MARKUP = "[bold red]PASSED[/] [link=http://x]y[/link]"
HOSTILE = f"\x1b[2J\x1b[H PASSED \x1b]0;pwned\x07 {MARKUP} \x9b1A\rok\u202egnp.exe\n\u2066PASSED\u2069"
#: Raw characters none of which may reach the stream.
RAW = ("\x1b", "\x07", "\x9b", "\r", "\u202e", "\u2066", "\u2069")


def assert_inert(out: str) -> None:
    """No raw control or bidi character in ``out``; the hostile text is visible as escapes."""
    for ch in RAW:
        assert ch not in out, repr(ch)
    assert "\\x1b[2J\\x1b[H PASSED \\x1b]0;pwned\\x07" in out
    assert "\\u202egnp.exe" in out


def _failure() -> Failure:
    return Failure(stage=Stage.FORWARD, kind=FailureKind.FORWARD_ERROR, message=HOSTILE,
                   traceback=f"Traceback (most recent call last):\n  File \"model.py\"\n{HOSTILE}\n")


def _failed_check() -> CheckOutcome:
    return CheckOutcome(CheckRequest(path=Path("model.py")), JobResult(job_id="j1", failure=_failure()))


# ----------------------------------------------------------------------- researcher check


def test_check_prints_a_hostile_failure_inert_and_on_its_own_lines() -> None:
    stream = StringIO()
    print_outcome(_failed_check(), as_json=False, stream=stream)
    out = stream.getvalue()
    assert_inert(out)
    assert MARKUP in out
    lines = out.splitlines()
    assert lines[0] == "FAILED model.py: forward_error at stage forward"
    # The message is one line however many newlines it holds; no line starts with a forged status.
    assert lines[1].startswith("  \\x1b[2J") and "\\x0a\\u2066PASSED" in lines[1]
    assert lines[2] == "  traceback (from the sandbox, trimmed):"
    assert all(line.startswith("    ") for line in lines[3:])
    assert not any(line.startswith(("PASSED", "FAILED")) for line in lines[1:])


def test_check_json_stays_valid_ascii_json_with_the_message_intact() -> None:
    stream = StringIO()
    print_outcome(_failed_check(), as_json=True, stream=stream)
    out = stream.getvalue()
    assert out.isascii() and all(ch.isprintable() or ch == "\n" for ch in out)
    data = json.loads(out)
    assert data["failure"]["message"] == HOSTILE  # escaped by JSON, not altered
    assert data["failure"]["traceback"] == _failure().traceback


def test_check_prints_hostile_user_names_inert_when_passing() -> None:
    from sandbox_image.protocol import CheckReport

    request = CheckRequest(path=Path("m\x1b]0;x\x07.py"), class_name="Net\x1b[2J")
    check = CheckReport(params=10, trainable_params=10, output_shape=(2, 10), forward_seconds=0.0)
    stream = StringIO()
    print_outcome(CheckOutcome(request, JobResult(job_id="j", check=check)), as_json=False, stream=stream)
    assert stream.getvalue().startswith("PASSED m\\x1b]0;x\\x07.py: Net\\x1b[2J has 10 parameters, output (2, 10)")
    counted = CheckReport(params=10, trainable_params=10, output_shape=(2, 10), forward_seconds=0.0, flops=9728)
    stream = StringIO()
    print_outcome(CheckOutcome(request, JobResult(job_id="j", check=counted)), as_json=False, stream=stream)
    assert "has 10 parameters and 9.73 kFLOPs per example (forward), output (2, 10)" in stream.getvalue()
    stream = StringIO()
    print_outcome(CheckOutcome(request, JobResult(job_id="j", check=counted)), as_json=True, stream=stream)
    assert json.loads(stream.getvalue())["flops"] == 9728


# ----------------------------------------------------------------------- researcher run: live view


def _plain_console() -> tuple[Console, StringIO]:
    """A terminal console that renders no colour: any escape in its output came from the content."""
    buf = StringIO()
    return Console(file=buf, force_terminal=True, color_system=None, width=400), buf


def test_plain_lines_print_failures_and_messages_inert(capsys: pytest.CaptureFixture[str]) -> None:
    view = LiveView(enabled=False)
    with view:
        view.candidate_finished(SimpleNamespace(id="c001", status="failed", failure=_failure()))
        view.message(f"LLM unusable ({HOSTILE}); fallback")
    err = capsys.readouterr().err
    for ch in RAW:
        assert ch not in err, repr(ch)
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("[researcher] ") for line in lines)
    assert lines[0].startswith("[researcher] c001 failed (forward_error): \\x1b[2J\\x1b[H PASSED")
    assert MARKUP in lines[1] and "\\u202egnp.exe" in lines[1]


def test_live_messages_are_neither_markup_nor_escapes() -> None:
    console, buf = _plain_console()
    with LiveView(console=console, enabled=True) as view:
        view.message(HOSTILE)
    out = buf.getvalue()
    # Live itself moves the cursor (and writes CR); what must be absent is every sequence of the message.
    for seq in ("\x1b[2J", "\x1b[H", "\x1b]0;", "\x07", "\x1b]8;", "\x9b", "\u202e"):
        assert seq not in out, repr(seq)
    assert MARKUP in out and "\\x1b[2J\\x1b[H PASSED \\x1b]0;pwned\\x07" in out


def _loop(registry: Registry) -> SimpleNamespace:
    config = ModelConfig(layers=(), name=f"m{HOSTILE}"[:40])  # built, not decoded: the pattern is not applied
    entry = {"proposal": SimpleNamespace(config=config), "epoch": 2, "epochs": 5, "seed": 0, "val_acc": 0.5}
    return SimpleNamespace(
        target=registry.settings.target, registry=registry, counted_candidates=lambda: 2,
        settings=SimpleNamespace(name=f"run{HOSTILE}", max_candidates=5, time_budget_s=60.0),
        state=SimpleNamespace(started=time.monotonic(), in_flight={"c002": entry}, finished=1, failed=1),
        pool=SimpleNamespace(stats={"ready": 1}),
    )


def test_live_panel_shows_hostile_names_literally(tmp_path: Path) -> None:
    with Registry.create(tmp_path / "run", f.settings(), plots=False) as registry:
        f.add_passed(registry, 2.0)
        panel = LiveView(enabled=False)._render(_loop(registry))
    console, buf = _plain_console()
    console.print(panel)
    out = buf.getvalue()
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert f"run\\x1b[2J\\x1b[H PASSED \\x1b]0;pwned\\x07 {MARKUP}" in out  # the header, verbatim
    assert "m\\x1b[2J\\x1b[H PASSED" in out  # the in-flight model name
    assert "c001" in out  # the leaderboard still renders


# ----------------------------------------------------------------------- researcher run: summary


def test_run_summary_prints_the_stop_message_inert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Registry.create(tmp_path / "run", f.settings(), plots=False) as registry:
        f.add_failed(registry, message=HOSTILE)
        paths = registry.paths
    _print_summary(paths, "failed", f"stopped by an error: RuntimeError: {HOSTILE}", 3.0, paths.root / "report.html")
    out = capsys.readouterr().out
    assert_inert(out)
    assert MARKUP in out
    lines = out.splitlines()
    assert lines[1].startswith("run failed: stopped by an error: RuntimeError: \\x1b[2J")
    assert not any(line.startswith("PASSED") or line.startswith("\\u2066PASSED") for line in lines)


# ----------------------------------------------------------------------- researcher doctor


def test_doctor_prints_engine_errors_inert() -> None:
    stream = StringIO()
    print_table([Finding("docker engine", False, f"engine says {HOSTILE}", "fix\x1b[8m hidden")], stream)
    out = stream.getvalue()
    assert_inert(out)
    assert "fix: fix\\x1b[8m hidden" in out
