"""The worker's forward check: shape, parameters and the FLOP count it reports."""

from __future__ import annotations

import msgspec
import pytest
import torch
from torch import nn

from sandbox_image import protocol as p
from sandbox_image.worker import check_forward, count_flops
from tests.fresh import compiler_stack_after


def _job(input_shape, num_classes: int) -> p.Job:
    return p.Job(job_id="j", source="", class_name="Net", input_shape=input_shape, num_classes=num_classes)


def test_the_check_reports_forward_flops_per_example() -> None:
    # conv 1->4, 3x3, padding 1 on 8x8: 2*(1*3*3)*4*8*8 = 4608 FLOPs; linear 256->10: 2*256*10 = 5120
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    report = check_forward(model, _job((1, 8, 8), 10), import_seconds=0.0)
    assert report.output_shape == (2, 10) and report.params == sum(q.numel() for q in model.parameters())
    assert report.flops == 4608 + 5120  # per example, whatever the check batch


def test_a_model_the_counter_cannot_follow_still_passes_with_no_count(monkeypatch) -> None:
    from sandbox_image import worker

    class Broken(worker._flop_counter()):  # type: ignore[misc]
        def __enter__(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("cannot trace this model")

    monkeypatch.setattr(worker, "_flop_counter", lambda: Broken)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    report = check_forward(model, _job((1, 8, 8), 3), import_seconds=0.0)
    assert report.output_shape == (2, 3) and report.flops is None


def test_elementwise_work_is_not_counted() -> None:
    class Scale(nn.Module):  # no matrix multiply, no convolution
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))

        def forward(self, x):  # type: ignore[no-untyped-def]
            return x * self.w

    assert count_flops(Scale().eval(), torch.randn(2, 4)) == 0


@pytest.mark.parametrize("flops", [None, 9728])
def test_a_check_report_reads_the_same_by_old_and_new_peers(flops) -> None:
    report = p.CheckReport(params=1, trainable_params=1, output_shape=(2, 3), forward_seconds=0.0, flops=flops)
    assert p.worker_decoder().decode(p.encoder().encode(report)) == report

    class OldCheckReport(msgspec.Struct, tag="CheckReport", tag_field="type", frozen=True, kw_only=True):
        params: int
        trainable_params: int
        output_shape: tuple[int, ...]
        forward_seconds: float
        import_seconds: float = 0.0

    # an image from before the field: its report decodes with no count
    old = msgspec.msgpack.encode(OldCheckReport(params=1, trainable_params=1, output_shape=(2, 3), forward_seconds=0.0))
    assert p.worker_decoder().decode(old).flops is None


def test_counting_never_loads_the_compiler_stack() -> None:
    """torch._dynamo costs 1-2 s of CPU per sandbox start: the count, like the recipe, does without it."""
    code = (
        "import sys, torch\n"
        "from torch import nn\n"
        "from sandbox_image.worker import count_flops\n"
        "model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(256, 10)).eval()\n"
        "print(count_flops(model, torch.randn(2, 1, 8, 8)))\n"
    )
    assert compiler_stack_after(code) == ([], ["9728"])


def test_the_stock_counter_counts_the_same() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                          nn.Flatten(), nn.Linear(8 * 15 * 15, 10)).eval()
    x = torch.randn(4, 3, 32, 32)
    stock = FlopCounterMode(display=False)
    with torch.no_grad(), stock:
        model(x)
    assert count_flops(model, x) == stock.get_total_flops() // 4 > 0
