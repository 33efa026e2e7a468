"""Remote slots without Ray: the orchestrator decodes and bounds a node's frames itself."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from orchestrator.cluster.host import SandboxHost
from orchestrator.cluster.pool import _own_sigterm, node_name, node_slots
from orchestrator.cluster.remote import RemoteChannel, RemoteSandbox, RemoteSlot
from orchestrator.exceptions import NodeLost, ProtocolViolation
from orchestrator.sandbox.base import Mounts
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.local import SubprocessBackend
from orchestrator.sandbox.runner import execute, new_job_id
from sandbox_image.protocol import PROTOCOL_VERSION, CheckReport, EpochStats, FailureKind, Job, Progress, Ready, encoder
from tests.cluster.fakes import DirectLink

MODELS = Path(__file__).resolve().parents[1] / "models"
CONFIG = SandboxConfig(timeout_s=60, cpus=1, max_message_bytes=4096)


def _job(model: str) -> Job:
    return Job(job_id=new_job_id(), source=(MODELS / model).read_text(), class_name="Net",
               input_shape=(1, 8, 8), num_classes=10)


@pytest.fixture
def host():
    host = SandboxHost(msgspec.structs.replace(CONFIG, max_message_bytes=1 << 20), slots=1,
                       backend=SubprocessBackend())
    host.stage({})
    yield host
    host.shutdown()


def _slot(host: SandboxHost, **link) -> RemoteSlot:
    return RemoteSlot(DirectLink(host, "n1/0000abcd", **link), host.acquire(60.0), CONFIG)


def test_a_job_through_a_host_passes_like_a_local_one_and_leaves_nothing(host):
    slot = _slot(host)
    with slot:
        result = execute(slot, _job("good_mlp.py"))
    assert result.status == "passed", result.failure
    assert result.check.params == 64 * 128 + 128 + 128 * 10 + 10
    assert slot.node == "n1/0000abcd"
    assert host.busy() == 0  # the slot was released on its node


def test_model_failures_come_back_typed_through_a_host(host):
    with _slot(host) as slot:
        result = execute(slot, _job("wrong_shape.py"))
    assert result.failure is not None and result.failure.kind is FailureKind.SHAPE_MISMATCH


def test_a_node_lost_under_a_job_raises_node_lost_naming_it(host):
    slot = _slot(host, die_on="recv")
    with slot, pytest.raises(NodeLost) as lost:
        execute(slot, _job("good_mlp.py"))
    assert lost.value.node == "n1/0000abcd" and "n1/0000abcd" in str(lost.value)
    assert host.busy() == 0  # released anyway: the link still answered release


class FramesLink:
    """A node that hands back whatever frames it is given (a node gone wrong)."""

    node = "bad/ffffffff"

    def __init__(self, frames):
        self.frames = list(frames)

    def call(self, method, *args, timeout_s=30.0):
        if method == "recv":
            frames, self.frames = self.frames, []
            return frames, None, 0
        return None


def _channel(frames, limit=4096) -> RemoteChannel:
    sandbox = RemoteSandbox(FramesLink(frames), "s1", Mounts(socket_path="/job/worker.sock", data_root=None))
    return RemoteChannel(sandbox, max_message_bytes=limit, received_bytes=0)


def test_garbage_from_a_node_is_a_protocol_violation_decoded_here():
    with pytest.raises(ProtocolViolation, match="undecodable"):
        _channel([b"\xc1garbage"]).recv(0.01)


def test_an_oversize_frame_from_a_node_is_refused_here():
    with pytest.raises(ProtocolViolation, match="byte limit"):
        _channel([b"x" * 5000]).recv(0.01)


def test_a_job_message_passed_off_as_a_worker_message_is_refused():
    job = encoder().encode(_job("good_mlp.py"))  # a valid message, but not one a worker may send
    with pytest.raises(ProtocolViolation):
        _channel([job], limit=1 << 20).recv(0.01)


def test_frames_are_counted_against_the_jobs_byte_budget():
    report = encoder().encode(CheckReport(params=1, trainable_params=1, output_shape=(2, 10), forward_seconds=0.1))
    channel = _channel([report, report])
    assert isinstance(channel.recv(0.01), CheckReport)
    assert channel.received_bytes == len(report)


def test_a_ready_out_of_bounds_fails_the_job_unsent():
    ready = encoder().encode(Ready(protocol=PROTOCOL_VERSION, cuda_devices=3))
    slot = RemoteSlot(FramesLink([]), {"slot": "s1", "ready": ready, "socket_path": "/job/worker.sock"}, CONFIG)
    assert "CUDA device" in slot.violation


def test_an_undecodable_ready_fails_the_job_unsent():
    slot = RemoteSlot(FramesLink([]), {"slot": "s1", "ready": b"\x00junk", "socket_path": "/job/worker.sock"}, CONFIG)
    assert "undecodable Ready" in slot.violation


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", "", "x\n"])
def test_a_host_refuses_data_names_that_are_not_flat_files(name):
    host = SandboxHost(CONFIG, slots=1, backend=SubprocessBackend())
    try:
        with pytest.raises(ValueError, match="refused data file name"):
            host.stage({name: b"1"})
    finally:
        host.shutdown()


def test_slots_per_node_follow_cpus_or_gpus():
    assert node_slots({"CPU": 16.0, "GPU": 2.0}, SandboxConfig(cpus=4)) == 4
    assert node_slots({"CPU": 1.0}, SandboxConfig(cpus=2)) == 0
    assert node_slots({"CPU": 16.0, "GPU": 2.0}, SandboxConfig(device="cuda")) == 2
    assert node_slots({"CPU": 16.0}, SandboxConfig(device="cuda")) == 0
    assert node_name({"NodeManagerHostname": "gpu-a", "NodeID": "1234567890abcdef"}) == "gpu-a/12345678"


def test_a_host_batches_only_progress_and_hands_anything_else_over_at_once():
    host = SandboxHost(CONFIG, slots=1, backend=SubprocessBackend())
    try:
        stats = EpochStats(epoch=1, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, seconds=0.1)
        assert host._ends_batch(encoder().encode(Progress(seed=0, stats=stats, epochs=3))) is False
        report = CheckReport(params=1, trainable_params=1, output_shape=(2, 10), forward_seconds=0.1)
        assert host._ends_batch(encoder().encode(report)) is True
        assert host._ends_batch(b"\xc1not msgpack") is True  # the orchestrator judges it, at once
    finally:
        host.shutdown()


def test_a_sigterm_while_ray_init_holds_the_handler_is_an_interrupt_and_ours_comes_back():
    import os
    import signal
    import sys
    import time

    def ours(signum, frame):  # the CLI's: SIGTERM unwinds like Ctrl-C
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, ours)
    try:
        with pytest.raises(KeyboardInterrupt) as caught, _own_sigterm():
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # as ray.init does
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode; this line is not finished
        assert isinstance(caught.value.__cause__, SystemExit)  # came through Ray's handler, made an interrupt
        assert signal.getsignal(signal.SIGTERM) is ours
        with pytest.raises(SystemExit), _own_sigterm():  # any other exit stays an exit
            sys.exit(3)
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, before)
