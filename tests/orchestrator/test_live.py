"""Without a terminal (compose `up`, CI, a pipe) the run still shows progress."""

import time
from types import SimpleNamespace

from orchestrator import live
from orchestrator.live import LiveView


def _loop(in_flight):
    return SimpleNamespace(state=SimpleNamespace(in_flight=in_flight, started=time.monotonic() - 42, finished=3))


def test_a_progress_line_every_heartbeat_names_each_candidate_in_flight(monkeypatch, capsys):
    monkeypatch.setattr(live, "HEARTBEAT_S", 0.0)
    view = LiveView(enabled=False)
    with view:
        view.refresh(_loop({"c004": {"epoch": 12, "epochs": 30, "seed": 1, "val_acc": 0.95123}, "c005": {"epoch": 0},
                            "c006": {"epoch": 0, "params": 77_786}}))  # its model checked: it is training
    err = capsys.readouterr().err
    assert ("[researcher] 42 s: c004 seed 1 epoch 12/30 val acc 0.9512; c005 starting; "
            "c006 training its first epoch (3 finished)") in err


def test_no_line_before_the_heartbeat_or_when_nothing_runs(capsys):
    view = LiveView(enabled=False)
    with view:
        view.refresh(_loop({"c001": {"epoch": 1, "epochs": 10, "seed": 0}}))  # too soon after start
        view._last_line -= live.HEARTBEAT_S
        view.refresh(_loop({}))  # nothing in flight
    assert capsys.readouterr().err == ""
