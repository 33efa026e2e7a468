"""`researcher run --llm-mode source` against an LLM whose every reply is an attack.

The attacks the issue measured ending a run with a traceback, through the real
Docker sandbox: model code that takes over the worker's socket and forges an
integer too large for SQLite, non-finite and endless learning curves, and a
wrong output shape; replies with a JSON number too long to convert, and source
nested past the parser's recursion limit. The run must finish with exit 0,
record every candidate with a failure kind, keep registry.json small, and never
write the endpoint's credentials anywhere in the run directory.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from orchestrator import cli
from orchestrator.registry import Registry, list_runs
from tests.fakes.fake_llm_server import FakeLLMServer, Reply

pytestmark = pytest.mark.docker

#: Shared by every forger: find the worker's own socket (the model runs inside the worker).
_FORGE = '''
import gc, math, time
import torch, zmq
from torch import nn
from sandbox_image.protocol import CheckReport, Done, EpochStats, Job, Predictions, Progress, encoder

def _send(*messages):
    for sock in (o for o in gc.get_objects() if isinstance(o, zmq.Socket) and not o.closed):
        for m in messages:
            sock.send(encoder().encode(m))

def _epochs():  # the job the worker holds says how many epochs were asked: forge a plausible count
    return next(o for o in gc.get_objects() if isinstance(o, Job)).train.epochs

def _stats(epoch, value):
    return EpochStats(epoch=epoch, train_loss=value, train_acc=0.5, val_loss=value, val_acc=0.5, seconds=0.1)
'''

_NET = '''
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        {attack}
        self.f = nn.Linear(4, 3)
    def forward(self, x):
        return self.f(x)
'''

ATTACKS = {
    # an integer SQLite cannot store, then a forged Done
    "huge_int": "_send(CheckReport(params=2**63, trainable_params=2**63, output_shape=(2, 3), forward_seconds=0.0), "
                "Done(seconds=0.0)); time.sleep(60)",
    # NaN in the curves (dynamics once raised StopIteration on it)
    "nan_curve": "_send(CheckReport(params=1, trainable_params=1, output_shape=(2, 3), forward_seconds=0.0), "
                 "Progress(seed=0, stats=_stats(1, math.nan), epochs=_epochs())); time.sleep(60)",
    # a few hundred thousand curve entries for a short job (registry.json once grew to 120 MB)
    "endless_curve": "_send(CheckReport(params=1, trainable_params=1, output_shape=(2, 3), forward_seconds=0.0), "
                     "Predictions(seed=0, logits=b'', dtype='<f4', shape=(0, 3), curves=(_stats(1, 1.0),) * 300000)); "
                     "time.sleep(60)",
    # the shape the host asked for is (2, 3)
    "wrong_shape": "_send(CheckReport(params=1, trainable_params=1, output_shape=(2, 99999), forward_seconds=0.0)); "
                   "time.sleep(60)",
}


def _source_reply(source: str) -> Reply:
    return Reply.json({"rationale": "trust me", "class_name": "Net", "python": source,
                       "train": {"epochs": 1, "batch_size": 32, "lr": 0.001, "optimizer": "adamw"}})


def _replies() -> list[Reply]:
    forgers = [_source_reply(_FORGE + textwrap.dedent(_NET).format(attack=attack)) for attack in ATTACKS.values()]
    too_long = Reply('{"rationale": "x", "class_name": "Net", "python": "", "train": {"epochs": '
                     + "9" * 50_000 + "}}")
    nested = _source_reply("x = " + "-" * 90_000 + "1\nclass Net: pass\n")  # under the length cap
    # the planner asks again after each unusable reply (repair, correction): give it more attacks
    return [*forgers, too_long, nested] * 6


def test_a_run_driven_by_a_hostile_llm_finishes_and_records_every_candidate(docker_client, tmp_path, monkeypatch,
                                                                           capsys):
    monkeypatch.chdir(tmp_path)
    with FakeLLMServer(_replies()) as server:
        url = server.base_url.replace("http://", "http://alice:s3cr3t-pass@") + "?key=s3cr3t-query"
        code = cli.main(["run", "--dataset", "iris", "--llm-base-url", url, "--llm-model", "fake-model",
                         "--llm-mode", "source", "--max-candidates", str(len(ATTACKS) + 2), "--seeds", "1",
                         "--cpus", "1", "--timeout", "60"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    [run] = list_runs(tmp_path / "runs")
    run_dir = tmp_path / "runs" / run.name
    with Registry.open(run_dir, readonly=True) as registry:
        assert registry.run_info().status == "finished"
        records = registry.candidates()
    assert len(records) == len(ATTACKS) + 2
    assert all(r.status in ("passed", "failed") for r in records)
    failed = [r for r in records if r.status == "failed"]
    assert all(r.failure is not None and r.failure.kind.value for r in failed)
    messages = " | ".join(r.failure.message for r in failed)
    assert all(r.failure.kind.value == "protocol_violation" for r in failed[:len(ATTACKS)]), messages
    for says in ("not a count in 0..2**53", "train_loss = nan", "length <= 1000", "output_shape (2, 99999)"):
        assert says in messages, f"no candidate failed with {says!r}: {messages}"
    exported = run_dir / "experiments" / "registry.json"
    assert exported.stat().st_size < 2_000_000
    assert json.loads(exported.read_text())["candidates"]
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"s3cr3t" not in data, f"a credential of --llm-base-url was written to {path}"
    assert "s3cr3t" not in out.out + out.err
