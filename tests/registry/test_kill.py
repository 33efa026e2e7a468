"""SIGKILL the process writing a run at an arbitrary moment: nothing committed is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.registry import Registry
from sandbox_image.protocol import FailureKind

ROOT = Path(__file__).resolve().parents[2]


def _run_until(run_dir: Path, committed_wanted: int, extra_lines: int) -> list[tuple[str, str]]:
    """Start the writer, read until ``committed_wanted`` commits plus ``extra_lines``, SIGKILL it."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.registry.writer_process", str(run_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    said: list[tuple[str, str]] = []
    deadline = time.monotonic() + 120
    try:
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"writer exited early with {proc.poll()}"
            verb, cid = line.split()
            said.append((verb, cid))
            commits = sum(v == "committed" for v, _ in said)
            if commits >= committed_wanted and len(said) >= 3 * committed_wanted + extra_lines:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return said


def _finished(record) -> bool:
    """Committed by the writer: scored, or failed for a reason of its own (not interrupted)."""
    return record.status in ("passed", "failed") and (
        record.failure is None or record.failure.kind != FailureKind.CRASHED)


def test_sigkill_loses_nothing_committed(tmp_path: Path) -> None:
    for extra in (0, 1, 2):  # killed after a commit, after an add, after a mark_running
        run_dir = tmp_path / f"run{extra}"
        said = _run_until(run_dir, committed_wanted=6, extra_lines=extra)
        with Registry.open(run_dir) as reg:
            records = {r.id: r for r in reg.candidates()}
            for verb, cid in said:
                assert cid in records, f"{verb} {cid} was lost"
            said_committed = {cid for v, cid in said if v == "committed"}
            for cid in said_committed:
                assert _finished(records[cid]), cid
            # The writer runs on while the test reads, so a candidate may be on disk
            # whose "committed" line was never read. Anything else was in flight when
            # killed and must be marked interrupted, never left "running".
            on_disk = {cid for cid, r in records.items() if _finished(r)}
            assert said_committed <= on_disk
            for cid in set(records) - on_disk:
                assert records[cid].failure is not None, f"{cid} left {records[cid].status}"
                assert records[cid].failure.kind == FailureKind.CRASHED, cid
            assert len(reg.llm_calls()) >= len(said_committed)
            assert reg.events()[-1].kind == "resumed"
            best = reg.best()
            assert best is not None and best.id in on_disk
            exported = json.loads(reg.export_json().read_text())
            assert {c["id"] for c in exported["candidates"]} == set(records)
        assert (run_dir / "src/models/model.py").read_text() == best.source
