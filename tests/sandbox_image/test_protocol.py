"""The protocol: round trips, typed decoding, refusal of anything else."""

import msgspec
import pytest

from sandbox_image import protocol as p


def _roundtrip(msg, decoder):
    return decoder.decode(p.encoder().encode(msg))


def test_every_worker_message_round_trips_through_the_host_decoder():
    stats = p.EpochStats(epoch=1, train_loss=0.5, train_acc=0.8, val_loss=0.6, val_acc=0.75, seconds=1.0)
    messages = [
        p.Ready(protocol=p.PROTOCOL_VERSION, python="3.11", torch="2.14.1"),
        p.CheckReport(params=10, trainable_params=10, output_shape=(2, 10), forward_seconds=0.01),
        p.Progress(seed=0, stats=stats, epochs=3),
        p.Batches(seed=0, epoch=2, step=120, steps=469, epochs=3),
        p.Predictions(seed=0, logits=b"\x00" * 8, dtype="<f4", shape=(1, 2), curves=(stats,)),
        p.Failure(stage=p.Stage.FORWARD, kind=p.FailureKind.SHAPE_MISMATCH, message="bad"),
        p.Done(seconds=1.0),
    ]
    decoder = p.worker_decoder()
    for msg in messages:
        assert _roundtrip(msg, decoder) == msg


def test_job_round_trips_with_training_settings():
    job = p.Job(job_id="j", source="x = 1", class_name="Net", input_shape=(1, 8, 8), num_classes=10,
                train=p.TrainSpec(epochs=3, seeds=(0, 1)), data=p.DataSpec())
    assert _roundtrip(job, p.job_decoder()) == job


def test_host_decoder_refuses_a_job_and_untagged_data():
    decoder = p.worker_decoder()
    job = p.Job(job_id="j", source="", class_name="N", input_shape=(1,), num_classes=2)
    with pytest.raises(msgspec.ValidationError):
        decoder.decode(p.encoder().encode(job))
    with pytest.raises(msgspec.ValidationError):
        decoder.decode(msgspec.msgpack.encode({"params": 1}))
    with pytest.raises(msgspec.DecodeError):
        decoder.decode(b"\xc1garbage")


def test_wrong_field_types_are_rejected():
    forged = msgspec.msgpack.encode({"type": "CheckReport", "params": "lots", "trainable_params": 1,
                                     "output_shape": [2, 10], "forward_seconds": 0.1})
    with pytest.raises(msgspec.ValidationError):
        p.worker_decoder().decode(forged)


def test_failure_kinds_are_the_documented_contract():
    assert {k.value for k in p.FailureKind} == {
        "syntax_error", "import_error", "instantiate_error", "forward_error", "shape_mismatch",
        "training_error", "non_finite", "timeout", "out_of_memory", "crashed",
        "protocol_violation", "sandbox_unavailable",
    }


def test_messages_are_frozen():
    done = p.Done(seconds=1.0)
    with pytest.raises(AttributeError):
        done.seconds = 2.0


def test_trim_traceback_keeps_the_end():
    text = "x" * 10_000 + "THE CAUSE"
    trimmed = p.trim_traceback(text, limit=100)
    assert trimmed.endswith("THE CAUSE") and len(trimmed) < 200
