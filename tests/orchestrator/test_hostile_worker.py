"""Property tests: whatever a (replaced) worker sends, the run finishes and records every candidate.

A forger (tests/fakes/scripted.py) plays an honest job's messages with Hypothesis'
mutations on top: every field set to any value its type admits (ints up to 2**64,
NaN and infinities in every float, empty and huge tuples, wrong shapes and bytes),
messages dropped, repeated, swapped, inserted and replaced by raw frames. The real
runner, loop, scoring, registry and reports handle it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.planning.types import Target
from orchestrator.registry import Registry, RunSettings
from orchestrator.research import Secrets, start_run
from orchestrator.sandbox.bounds import MAX_COUNT
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.runner import Slot, execute
from sandbox_image.protocol import (
    PROTOCOL_VERSION,
    Batches,
    CheckReport,
    DataSpec,
    Done,
    EpochStats,
    Failure,
    FailureKind,
    Job,
    Predictions,
    Progress,
    Ready,
    Stage,
    TrainSpec,
)
from tests.fakes.scripted import ScriptedBackend

CONFIG = SandboxConfig(timeout_s=30, cpus=1)
PROFILE = dict(deadline=None, database=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                      HealthCheck.data_too_large])

# ------------------------------------------------------------------ hostile values

INTS = st.one_of(st.integers(-(2**63), 2**64 - 1),
                 st.sampled_from([0, 1, -1, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 5e-324]))
TEXT = st.one_of(st.text(max_size=50), st.sampled_from(["\x1b[2J", "<f4", "<f8", "|O", "cuda", "x" * 10_000]))
BLOBS = st.one_of(st.binary(max_size=200), st.integers(0, 4096).map(lambda n: b"\xff" * n))
STATS = st.builds(EpochStats, epoch=INTS, train_loss=FLOATS, train_acc=FLOATS, val_loss=FLOATS,
                  val_acc=FLOATS, seconds=FLOATS, lr=FLOATS)
# a huge tuple is cheap to draw as one value repeated
TUPLES_OF_INTS = st.one_of(st.lists(INTS, max_size=6).map(tuple),
                           st.tuples(INTS, st.integers(0, 100_000)).map(lambda p: (p[0],) * p[1]))
CURVES = st.one_of(st.lists(STATS, max_size=5).map(tuple),
                   st.tuples(STATS, st.integers(0, 300_000)).map(lambda p: (p[0],) * p[1]))
FAILURES = st.builds(Failure, stage=st.sampled_from(Stage), kind=st.sampled_from(FailureKind), message=TEXT,
                     traceback=TEXT)
ANY_MESSAGE = st.one_of(
    st.builds(Ready, protocol=INTS, python=TEXT, torch=TEXT, device=TEXT, cuda_devices=INTS, threads=INTS),
    st.builds(CheckReport, params=INTS, trainable_params=INTS, output_shape=TUPLES_OF_INTS,
              forward_seconds=FLOATS, import_seconds=FLOATS, flops=st.one_of(st.none(), INTS)),
    st.builds(Progress, seed=INTS, stats=STATS, epochs=INTS),
    st.builds(Batches, seed=INTS, epoch=INTS, step=INTS, steps=INTS, epochs=INTS, planned=INTS,
              phase=st.one_of(st.sampled_from(["train", "val", "predict"]), TEXT)),
    st.builds(Predictions, seed=INTS, logits=BLOBS, dtype=TEXT, shape=TUPLES_OF_INTS, curves=CURVES,
              best_epoch=INTS, stopped_early=st.booleans(), seconds=FLOATS),
    FAILURES,
    st.builds(Done, seconds=FLOATS),
)
#: What a field of each type may be set to.
BY_TYPE = {int: INTS, float: FLOATS, str: TEXT, bytes: BLOBS, bool: st.booleans()}


@dataclass(frozen=True)
class Mutation:
    """One change to an honest script; indices wrap around the script's length."""

    op: str
    index: int
    other: int = 0
    field: str = ""
    value: object = None


@st.composite
def mutations(draw) -> Mutation:
    """A hostile change: a field of any message or epoch, or the sequence itself."""
    op = draw(st.sampled_from(["field", "stats", "curves", "drop", "dup", "swap", "insert", "raw", "logits"]))
    index, other = draw(st.integers(0, 10_000)), draw(st.integers(0, 10_000))
    if op == "field":
        name, kind = draw(st.sampled_from([
            ("params", int), ("trainable_params", int), ("forward_seconds", float), ("import_seconds", float),
            ("seed", int), ("epochs", int), ("dtype", str), ("best_epoch", int), ("seconds", float),
            ("stopped_early", bool), ("logits", bytes), ("epoch", int), ("step", int), ("steps", int),
            ("planned", int), ("flops", int), ("phase", str),
        ]))
        return Mutation(op, index, field=name, value=draw(BY_TYPE[kind]))
    if op == "stats":
        name, kind = draw(st.sampled_from([(f, int if f == "epoch" else float) for f in EpochStats.__struct_fields__]))
        return Mutation(op, index, other, field=name, value=draw(BY_TYPE[kind]))
    if op == "curves":
        return Mutation(op, index, value=draw(CURVES))
    if op == "insert":
        return Mutation(op, index, value=draw(ANY_MESSAGE))
    if op == "raw":
        return Mutation(op, index, value=draw(st.one_of(BLOBS, st.just(msgspec.msgpack.encode({"type": "Done"})))))
    if op == "logits":
        return Mutation(op, index, value=draw(st.sampled_from(
            [np.nan, np.inf, -np.inf, 3.0e38, 1e-45, 0.0, 1e300])))
    return Mutation(op, index, other)


def honest_script(job: Job, n_test: int) -> list:
    """What an honest worker sends for ``job``: a check, each seed's epochs and predictions, Done;
    where its first epoch's training (two Batches) and validation are, and its prediction (one
    each): 8 Batches in all, within the host's burst, since the script is fast."""
    assert job.train is not None
    k, epochs = job.num_classes, job.train.epochs
    out: list = [CheckReport(params=123, trainable_params=123, output_shape=(job.check_batch, k),
                             forward_seconds=0.01, import_seconds=0.1, flops=246)]
    for seed in job.train.seeds:
        curve = tuple(EpochStats(epoch=e, train_loss=1.0 / e, train_acc=0.5 + 0.4 * e / epochs, val_loss=1.2 / e,
                                 val_acc=0.5 + 0.3 * e / epochs, seconds=0.1, lr=1e-3) for e in range(1, epochs + 1))
        for stats in curve:
            if stats.epoch == 1:
                out += [Batches(seed=seed, epoch=1, step=step, steps=4, epochs=epochs) for step in (1, 3)]
                out.append(Batches(seed=seed, epoch=1, step=1, steps=2, epochs=epochs, phase="val"))
            out.append(Progress(seed=seed, stats=stats, epochs=epochs))
        out.append(Batches(seed=seed, epoch=epochs, step=1, steps=2, epochs=epochs, phase="predict"))
        logits = np.random.default_rng(seed).normal(size=(n_test, k)).astype("<f4")
        out.append(Predictions(seed=seed, logits=logits.tobytes(), dtype="<f4", shape=(n_test, k), curves=curve,
                               best_epoch=epochs, seconds=1.0))
    out.append(Done(seconds=1.0))
    return out


def mutate(script: list, plan: list[Mutation]) -> list:
    """``script`` with every mutation of ``plan`` applied in order (structs are never validated here)."""
    script = list(script)
    for m in plan:
        if not script:
            break
        i, j = m.index % len(script), m.other % len(script)
        # a field's mutation lands on a message that has the field (of the kind it was drawn for)
        having = {"field": lambda x: isinstance(x, msgspec.Struct) and m.field in x.__struct_fields__,
                  "stats": lambda x: isinstance(x, Progress) or (isinstance(x, Predictions) and bool(x.curves)),
                  "curves": lambda x: isinstance(x, Predictions),
                  "logits": lambda x: isinstance(x, Predictions) and bool(x.logits)}.get(m.op)
        if having is not None:
            targets = [k for k, x in enumerate(script) if having(x)]
            if not targets:
                continue
            i = targets[m.index % len(targets)]
        msg = script[i]
        if m.op == "field" and isinstance(msg, msgspec.Struct) and m.field in msg.__struct_fields__:
            script[i] = msgspec.structs.replace(msg, **{m.field: m.value})
        elif m.op == "stats" and isinstance(msg, Progress):
            script[i] = msgspec.structs.replace(msg, stats=msgspec.structs.replace(msg.stats, **{m.field: m.value}))
        elif m.op == "stats" and isinstance(msg, Predictions) and msg.curves:
            curves = list(msg.curves)
            curves[j % len(curves)] = msgspec.structs.replace(curves[j % len(curves)], **{m.field: m.value})
            script[i] = msgspec.structs.replace(msg, curves=tuple(curves))
        elif m.op == "curves" and isinstance(msg, Predictions):
            script[i] = msgspec.structs.replace(msg, curves=m.value)
        elif m.op == "logits" and isinstance(msg, Predictions) and msg.logits:
            values = np.frombuffer(msg.logits, dtype="<f4").copy()
            values[j % len(values)] = m.value
            script[i] = msgspec.structs.replace(msg, logits=values.astype("<f4").tobytes())
        elif m.op == "drop":
            del script[i]
        elif m.op == "dup":
            script.insert(i, msg)
        elif m.op == "swap":
            script[i], script[j] = script[j], script[i]
        elif m.op in ("insert", "raw"):
            script.insert(i, m.value)
    return script


def _execute(backend: ScriptedBackend, jobs_root: Path, job: Job | None = None, seen: list | None = None):
    """One job through a fresh slot of ``backend``: the real runner, socket and checks; ``seen``
    gets every message the runner passed on (what the loop and the live view see)."""
    with Slot(backend, CONFIG, jobs_root=jobs_root) as slot:
        slot.start()
        slot.wait_ready(5)
        return execute(slot, job or JOB, n_test=N_TEST, on_message=None if seen is None else seen.append)


def _forger(plan: list[Mutation], n_test: int) -> ScriptedBackend:
    return ScriptedBackend(lambda job: mutate(honest_script(job, n_test), plan))


# ------------------------------------------------------------------ one job, many scripts

JOB = Job(job_id="hostile", source="", class_name="Net", input_shape=(4,), num_classes=3,
          train=TrainSpec(epochs=3, seeds=(0, 1)), data=DataSpec())
N_TEST = 30


@settings(max_examples=150, **PROFILE)
@given(plan=st.lists(mutations(), max_size=4))
def test_any_script_ends_as_a_result_whose_values_are_bounded(plan, tmp_path):
    backend = _forger(plan, N_TEST)
    seen: list = []
    result = _execute(backend, tmp_path, seen=seen)
    assert result.status in ("passed", "failed")
    # whatever the end, each Batches passed on to the view names an asked seed's running epoch and a batch in it
    for msg in (m for m in seen if isinstance(m, Batches)):
        assert msg.seed in (0, 1) and msg.epochs == 3 and 1 <= msg.epoch <= 3
        assert 1 <= msg.step <= msg.steps <= MAX_COUNT and (msg.planned == 0 or msg.epoch <= msg.planned <= 3)
    if result.failure is not None:
        assert isinstance(result.failure.kind, FailureKind)
        return
    # a passed job holds only values an honest worker could produce
    assert result.check is not None and 0 <= result.check.params <= MAX_COUNT
    assert result.check.output_shape == (JOB.check_batch, JOB.num_classes)
    assert sorted(result.logits) == [0, 1]
    assert all(np.isfinite(v).all() and v.shape == (N_TEST, 3) for v in result.logits.values())
    assert 0 <= result.check.trainable_params <= result.check.params
    assert result.check.flops is None or 0 <= result.check.flops <= MAX_COUNT
    assert np.isfinite([result.check.forward_seconds, result.check.import_seconds]).all()
    curves = [s for p in result.predictions for s in p.curves] + [p.stats for p in result.progress]
    assert all(len(p.curves) <= 3 and 0 <= p.best_epoch <= 3 and np.isfinite(p.seconds) for p in result.predictions)
    assert all(p.seed in (0, 1) and p.epochs == 3 for p in result.progress)
    for s in curves:
        assert 1 <= s.epoch <= 3 and 0 <= s.val_acc <= 1 and 0 <= s.train_acc <= 1
        assert np.isfinite([s.train_loss, s.val_loss, s.seconds, s.lr]).all()


def test_the_honest_script_passes(tmp_path):
    """The forger's unmutated script is what a real worker sends: it must pass, or the properties prove nothing."""
    result = _execute(_forger([], N_TEST), tmp_path)
    assert result.failure is None, result.failure
    assert sorted(result.logits) == [0, 1]


@pytest.mark.parametrize("field, value, words", [
    ("params", 2**63, "0..2**53"),
    ("flops", -1, "flops = -1 is not a count"),
    ("flops", 2**53 + 1, "0..2**53"),
    ("forward_seconds", float("nan"), "finite"),
    ("output_shape", (2, 4), "output_shape"),
])
def test_each_bound_is_a_protocol_violation(field, value, words, tmp_path):
    plan = [Mutation("field", 0, field=field, value=value)] if field != "output_shape" else []
    backend = _forger(plan, N_TEST)
    if field == "output_shape":
        backend = ScriptedBackend(lambda job: [msgspec.structs.replace(
            honest_script(job, N_TEST)[0], output_shape=value)])
    result = _execute(backend, tmp_path)
    assert result.failure is not None and result.failure.kind is FailureKind.PROTOCOL_VIOLATION
    assert words in result.failure.message


def test_curves_longer_than_the_epochs_asked_are_refused(tmp_path):
    stats = EpochStats(epoch=1, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, seconds=0.1)
    plan = [Mutation("curves", i, value=(stats,) * 200_000) for i in range(10)]
    result = _execute(_forger(plan, N_TEST), tmp_path)
    assert result.failure is not None and result.failure.kind is FailureKind.PROTOCOL_VIOLATION


def test_a_ready_that_sees_gpus_on_a_cpu_job_fails_the_job_unsent(tmp_path):
    ready = Ready(protocol=PROTOCOL_VERSION, device="cuda", cuda_devices=8)
    sent = []
    backend = ScriptedBackend(lambda job: sent.append(job) or honest_script(job, N_TEST), ready=ready)
    result = _execute(backend, tmp_path)
    assert result.failure is not None and result.failure.kind is FailureKind.PROTOCOL_VIOLATION
    assert "8 CUDA device(s) for a cpu job" in result.failure.message
    assert sent == []  # the job (the candidate's source) never reached that sandbox


# ------------------------------------------------------------------ whole runs

def _run_settings(name: str) -> RunSettings:
    return RunSettings(goal="iris classifier", name=name, dataset="iris", seeds=(0, 1), max_candidates=2,
                       time_budget_s=600.0, target=Target(metric="accuracy", threshold=None))


@pytest.mark.slow
@settings(max_examples=15, **PROFILE)
@given(plan=st.lists(mutations(), max_size=4))
def test_a_run_against_any_forger_finishes_and_records_every_candidate(plan, tmp_path_factory, capsys):
    root = tmp_path_factory.mktemp("runs")
    from orchestrator.evaluation import load_prepared

    n_test = load_prepared("iris", None).n_eval  # the sandbox predicts selection and test inputs
    code = start_run(_run_settings("r"), root=root, config=CONFIG, secrets=Secrets(),
                     backend_factory=lambda: _forger(plan, n_test))
    assert code == 0
    run = root / "r"
    with Registry.open(run, readonly=True) as registry:
        records = registry.candidates()
        assert registry.run_info().status == "finished"
    assert len(records) == 2
    for record in records:
        assert record.status in ("passed", "failed")
        assert record.status == "passed" or isinstance(record.failure.kind, FailureKind)
        assert all(len(c) <= record.proposal.train.epochs for c in record.curves.values())
    exported = run / "experiments" / "registry.json"
    assert exported.stat().st_size < 2_000_000, "registry.json must stay small whatever the worker sends"
    assert len(json.loads(exported.read_text())["candidates"]) == 2
    assert (run / "report.html").is_file() and (run / "report.md").is_file()
    capsys.readouterr()


def test_a_run_of_honest_forgers_passes_every_candidate(tmp_path: Path, capsys):
    from orchestrator.evaluation import load_prepared

    n_test = load_prepared("iris", None).n_eval
    start_run(_run_settings("ok"), root=tmp_path, config=CONFIG, secrets=Secrets(),
              backend_factory=lambda: _forger([], n_test))
    with Registry.open(tmp_path / "ok", readonly=True) as registry:
        assert [r.status for r in registry.candidates()] == ["passed", "passed"]
    capsys.readouterr()


def test_a_worker_over_its_byte_budget_is_cut_off(tmp_path):
    """Frames that are each valid and small enough add up: past the job's budget it is a protocol violation."""
    check = CheckReport(params=1, trainable_params=1, output_shape=(2, 3), forward_seconds=0.0)
    backend = ScriptedBackend(lambda job: [check] + [_padded_progress(epoch, 400_000) for epoch in (1, 2, 3)])
    result = _execute(backend, tmp_path)
    assert result.failure is not None and result.failure.kind is FailureKind.PROTOCOL_VIOLATION
    assert "over this job's budget" in result.failure.message


def _padded_progress(epoch: int, size: int) -> bytes:
    """A valid Progress with an unknown extra field of ``size`` bytes (decoders skip unknown fields)."""
    stats = EpochStats(epoch=epoch, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, seconds=0.1)
    body = msgspec.to_builtins(Progress(seed=0, stats=stats, epochs=3))
    body["padding"] = "p" * size
    return msgspec.msgpack.encode(body)


def test_the_view_sees_the_honest_batches_in_order(tmp_path):
    seen: list = []
    result = _execute(_forger([], N_TEST), tmp_path, seen=seen)
    assert result.failure is None, result.failure
    where = [(m.seed, m.phase, m.epoch, m.step) for m in seen if isinstance(m, Batches)]
    assert where == [w for seed in (0, 1) for w in ((seed, "train", 1, 1), (seed, "train", 1, 3), (seed, "val", 1, 1),
                                                    (seed, "predict", 3, 1))]


@pytest.mark.parametrize("change, words", [
    (dict(epoch=2), "says epoch 2; it is training epoch 1 of 3"),  # ahead of the epochs finished
    (dict(step=5), "batch 5 of 4"),
    (dict(step=0), "batch 0 of 4"),
    (dict(steps=2**64 - 1), "0..2**53"),
    (dict(seed=7), "seed 7, which was not asked for"),
    (dict(epochs=4), "Batches says 4 epochs; 3 were asked"),
    (dict(planned=4), "training goes to epoch 4; it is training epoch 1 of the 3 asked"),
    (dict(planned=-1), "training goes to epoch -1"),
    (dict(phase="predict"), "Batches predicting for seed 0 after epoch 1; its last epoch reported is 0"),
    (dict(phase="val", epoch=2), "says epoch 2; it is training epoch 1 of 3"),  # validating ahead too
])
def test_a_batches_message_out_of_place_is_a_protocol_violation(change, words, tmp_path):
    def script(job):
        honest = honest_script(job, N_TEST)
        first = next(i for i, m in enumerate(honest) if isinstance(m, Batches))
        honest[first] = msgspec.structs.replace(honest[first], **change)
        return honest

    result = _execute(ScriptedBackend(script), tmp_path)
    assert result.failure is not None and result.failure.kind is FailureKind.PROTOCOL_VIOLATION
    assert words in result.failure.message


@pytest.mark.parametrize("change, words", [
    (dict(epoch=2), "Batches predicting for seed 0 after epoch 2; its last epoch reported is 3"),
    (dict(epoch=4), "after epoch 4; its last epoch reported is 3"),
    (dict(planned=3), "Batches predicting says training goes to epoch 3"),
    (dict(step=3), "batch 3 of 2"),
])
def test_a_prediction_batches_message_out_of_place_is_a_protocol_violation(change, words, tmp_path):
    def script(job):
        honest = honest_script(job, N_TEST)
        first = next(i for i, m in enumerate(honest) if isinstance(m, Batches) and m.phase == "predict")
        honest[first] = msgspec.structs.replace(honest[first], **change)
        return honest

    result = _execute(ScriptedBackend(script), tmp_path)
    assert result.failure is not None and result.failure.kind is FailureKind.PROTOCOL_VIOLATION
    assert words in result.failure.message


def test_an_unknown_phase_is_refused_at_decoding(tmp_path):
    def script(job):
        honest = honest_script(job, N_TEST)
        first = next(i for i, m in enumerate(honest) if isinstance(m, Batches))
        honest[first] = msgspec.structs.replace(honest[first], phase="exfiltrate")  # never validated when built
        return honest

    result = _execute(ScriptedBackend(script), tmp_path)
    assert result.failure is not None and result.failure.kind is FailureKind.PROTOCOL_VIOLATION


def test_batches_after_a_seeds_predictions_or_its_last_epoch_are_refused(tmp_path):
    def late(job):  # seed 0 says where it is after its predictions went
        honest = honest_script(job, N_TEST)
        at = next(i for i, m in enumerate(honest) if isinstance(m, Predictions)) + 1
        return honest[:at] + [Batches(seed=0, epoch=4, step=1, steps=4, epochs=3)] + honest[at:]

    result = _execute(ScriptedBackend(late), tmp_path)
    assert result.failure is not None and "Batches for seed 0 after its 3 epochs" in result.failure.message


def test_a_flood_of_batches_is_cut_off(tmp_path):
    """Valid, tiny and many: more than the burst plus one a second is a protocol violation."""
    check = CheckReport(params=1, trainable_params=1, output_shape=(2, 3), forward_seconds=0.0)
    flood = [Batches(seed=0, epoch=1, step=1, steps=4, epochs=3)] * 500
    result = _execute(ScriptedBackend(lambda job: [check, *flood]), tmp_path)
    assert result.failure is not None and result.failure.kind is FailureKind.PROTOCOL_VIOLATION
    assert "more than 10 plus one a second" in result.failure.message


def test_a_fast_worker_loses_no_frame_behind_the_small_receive_queue(tmp_path):
    """400 frames sent at once against a 16-frame receive queue: the worker waits for Bye, so all arrive."""
    job = msgspec.structs.replace(JOB, train=msgspec.structs.replace(JOB.train, epochs=200))
    result = _execute(_forger([], N_TEST), tmp_path, job)
    assert result.failure is None, result.failure
    assert len(result.progress) == 400 and len(result.predictions) == 2
