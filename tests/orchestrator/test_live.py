"""Without a terminal (compose `up`, CI, a pipe) the run still shows progress."""

import time
from types import SimpleNamespace

import msgspec

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


def test_a_long_epoch_shows_its_batch_and_each_candidate_its_time(monkeypatch, capsys):
    monkeypatch.setattr(live, "HEARTBEAT_S", 0.0)
    now = time.monotonic()
    view = LiveView(enabled=False)
    with view:
        view.refresh(_loop({
            "c007": {"epoch": 3, "epochs": 20, "seed": 0, "val_acc": 0.9, "batch": (4, 120, 469), "planned": 7,
                     "submitted": now - 95},  # its deadline fits 7 of the 20 epochs asked
            "c008": {"epoch": 0, "epochs": 10, "seed": 0, "params": 10, "batch": (1, 7, 235),
                     "submitted": now - 31},  # inside its first epoch
            "c009": {"epoch": 0, "submitted": now - 2},
        }))
    err = capsys.readouterr().err
    assert ("c007 seed 0 epoch 4/7 (of 20 asked), batch 120/469 val acc 0.9000 at epoch 3 (95 s); "
            "c008 seed 0 epoch 1/10, batch 7/235 (31 s); c009 starting (2 s) (3 finished)") in err


def test_the_panel_shows_the_batch_and_time_of_each_candidate():
    from io import StringIO

    from rich.console import Console

    from orchestrator.planning.types import Target

    console = Console(file=StringIO(), width=200, record=True)
    now = time.monotonic()
    proposal = SimpleNamespace(config=SimpleNamespace(name="resnet_w64"))
    loop = SimpleNamespace(
        state=SimpleNamespace(in_flight={"c002": {"proposal": proposal, "epoch": 1, "epochs": 8, "seed": 0,
                                                  "val_acc": 0.5, "params": 1000, "batch": (2, 50, 100),
                                                  "submitted": now - 61}},
                              started=now - 70, finished=1, failed=0),
        settings=SimpleNamespace(name="r", max_candidates=5, time_budget_s=600),
        target=Target(metric="accuracy", threshold=0.9), pool=SimpleNamespace(stats={"ready": 1}),
        counted_candidates=lambda: 2, registry=SimpleNamespace(candidates=lambda status: []))
    console.print(LiveView(console=console, enabled=False)._render(loop))
    text = console.export_text()
    assert "2/8, batch 50/100" in text and "61 s" in text and "resnet_w64" in text


def test_no_line_before_the_heartbeat_or_when_nothing_runs(capsys):
    view = LiveView(enabled=False)
    with view:
        view.refresh(_loop({"c001": {"epoch": 1, "epochs": 10, "seed": 0}}))  # too soon after start
        view._last_line -= live.HEARTBEAT_S
        view.refresh(_loop({}))  # nothing in flight
    assert capsys.readouterr().err == ""


def test_the_next_seeds_batches_do_not_carry_the_last_seeds_epoch():
    """What the loop keeps per candidate for the view: a new seed's first Batches clears the last seed's
    epoch and val acc (else '... seed 1 epoch 1/12, batch 73/180 val acc 0.9344 at epoch 6')."""
    import threading

    from orchestrator.loop import ResearchLoop
    from sandbox_image.protocol import Batches, EpochStats, Progress, TrainSpec

    proposal = SimpleNamespace(train=TrainSpec(epochs=12, seeds=(0, 1)))
    entry = {"proposal": proposal, "seed": None, "epoch": 0, "val_acc": None, "submitted": time.monotonic()}
    loop = SimpleNamespace(state=SimpleNamespace(in_flight={"c001": entry}), planner=None,
                           _planner_lock=threading.Lock())
    stats = EpochStats(epoch=6, train_loss=0.2, train_acc=0.93, val_loss=0.2, val_acc=0.9344, seconds=15.0)
    for msg in (Batches(seed=0, epoch=6, step=90, steps=180, epochs=12), Progress(seed=0, stats=stats, epochs=12),
                Batches(seed=1, epoch=1, step=73, steps=180, epochs=12)):
        assert ResearchLoop._track(loop, "c001", proposal, msg) is False
    assert (entry["seed"], entry["epoch"], entry["val_acc"], entry["batch"]) == (1, 0, None, (1, 73, 180))
    assert LiveView._in_flight_line(SimpleNamespace(state=SimpleNamespace(
        in_flight={"c001": entry}, finished=0))).startswith("c001 seed 1 epoch 1/12, batch 73/180 (")


def test_validation_and_prediction_show_where_they_are():
    """A long validation or the prediction after the last epoch moves the line too; Predictions ends it."""
    import threading

    from orchestrator.loop import ResearchLoop
    from sandbox_image.protocol import Batches, EpochStats, Predictions, Progress, TrainSpec

    proposal = SimpleNamespace(train=TrainSpec(epochs=12, seeds=(0, 1)))
    entry = {"proposal": proposal, "seed": None, "epoch": 0, "val_acc": None, "submitted": time.monotonic()}
    loop = SimpleNamespace(state=SimpleNamespace(in_flight={"c001": entry}), planner=None,
                           _planner_lock=threading.Lock())
    view = SimpleNamespace(state=SimpleNamespace(in_flight={"c001": entry}, finished=0))

    def line(msg) -> str:  # type: ignore[no-untyped-def]
        assert ResearchLoop._track(loop, "c001", proposal, msg) is False
        return LiveView._in_flight_line(view)

    stats = EpochStats(epoch=7, train_loss=0.2, train_acc=0.93, val_loss=0.2, val_acc=0.9344, seconds=15.0)
    assert line(Batches(seed=0, epoch=8, step=10, steps=33, epochs=12, planned=8, phase="val")).startswith(
        "c001 seed 0 epoch 8/8 (of 12 asked), validating 10/33")
    assert line(Progress(seed=0, stats=msgspec.structs.replace(stats, epoch=8), epochs=12)).startswith(
        "c001 seed 0 epoch 8/8 (of 12 asked) val acc 0.9344")
    # predicting keeps the epochs the deadline planned (its own planned is 0)
    assert line(Batches(seed=0, epoch=8, step=5, steps=63, epochs=12, phase="predict")).startswith(
        "c001 seed 0 epoch 8/8 (of 12 asked), predicting 5/63 val acc 0.9344")
    assert line(Predictions(seed=0, logits=b"", dtype="<f4", shape=(0, 10))).startswith(
        "c001 seed 0 epoch 8/8 (of 12 asked) val acc 0.9344")


def test_a_finished_final_training_names_the_candidate_it_retrained(tmp_path, capsys):
    from msgspec import structs

    from orchestrator.planning.types import FINAL_OF
    from orchestrator.registry import Registry
    from tests.registry import factories as f

    with Registry.create(tmp_path / "run", f.settings(), plots=False) as reg:
        searched = f.add_passed(reg, 2.0)
        final = structs.replace(f.proposal(), ref="optuna:offline:final", params={FINAL_OF: searched})
        records = [reg.candidate(searched), reg.candidate(f.add_passed(reg, 3.0, proposed=final))]
    view = LiveView(enabled=False)  # no loop attached: it reports accuracy
    for record in records:
        view.candidate_finished(record)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"[researcher] {searched} selection accuracy ")
    assert lines[1].startswith(f"[researcher] {records[1].id} (final of {searched}) selection accuracy ")


def test_a_final_training_in_flight_names_the_candidate_it_retrains(monkeypatch, capsys):
    from orchestrator.planning.types import FINAL_OF, Proposal
    from tests.registry import factories as f

    monkeypatch.setattr(live, "HEARTBEAT_S", 0.0)
    config = f.proposal().config
    final = Proposal(config=config, ref="optuna:offline:final", params={FINAL_OF: "c002"})
    view = LiveView(enabled=False)
    with view:
        view.refresh(_loop({"c003": {"proposal": final, "epoch": 208, "epochs": 500, "seed": 1, "val_acc": 1.0},
                            "c004": {"proposal": Proposal(config=config, params={FINAL_OF: "c002"}), "epoch": 0}}))
    err = capsys.readouterr().err
    assert "c003 (final of c002) seed 1 epoch 208/500 val acc 1.0000; c004 starting (3 finished)" in err


def test_a_finished_line_gives_the_candidates_size_cost_time_and_truncation(tmp_path, capsys):
    from msgspec import structs

    from orchestrator.registry import Registry
    from tests.registry import factories as f

    with Registry.create(tmp_path / "run", f.settings(), plots=False) as reg:
        record = reg.candidate(f.add_passed(reg, 2.0, width=16))
    view = LiveView(enabled=False)
    view.candidate_finished(record)
    view.candidate_finished(structs.replace(record, truncated=True))
    whole, cut = capsys.readouterr().err.splitlines()
    assert whole.endswith("(16,000 params, 32 kFLOPs per example, 2.5 s)")
    assert cut.endswith("(16,000 params, 32 kFLOPs per example, 2.5 s, truncated at its deadline)")
