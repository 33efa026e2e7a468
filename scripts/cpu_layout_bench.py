"""Seconds per training epoch on this CPU with NCHW and with channels_last memory layout.

The recipe stores images and weights channels-last on every device (``TrainSpec.channels_last``,
set by the offline planner for images). This script measures why, on this host: for the
offline planner's first designs on a dataset's input shape (rendered by the assembler, as
the sandbox gets them), it times training steps of the recipe's own optimiser and loss in
both layouts and prints seconds per epoch of the dataset's train split and the ratio::

    python scripts/cpu_layout_bench.py [--dataset fashion_mnist] [--steps 20] [--designs 3]

Same process, same threads, same batches: the ratio is the layout's, not the host's.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per design and layout")
    parser.add_argument("--designs", type=int, default=3, help="how many of the planner's first proposals")
    args = parser.parse_args()

    import msgspec
    import torch

    from evaluator.recipe import make_optimizer
    from orchestrator.bench import candidates
    from orchestrator.evaluation import load_prepared

    prepared = load_prepared(args.dataset, None)
    facts = prepared.facts()
    shape, n_train = tuple(facts.input_shape), facts.n_train
    if len(shape) != 3:
        raise SystemExit(f"{args.dataset} is not an image dataset (input {shape}): layout does not apply")
    print(f"{args.dataset}: input {shape}, {n_train} train images; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    for item in candidates(facts, args.designs, 1):
        module = types.ModuleType(item.cid)
        exec(compile(item.source, item.cid, "exec"), module.__dict__)  # noqa: S102 - our own rendered source
        spec = item.train
        seconds = {}
        for layout in ("nchw", "channels_last"):
            torch.manual_seed(0)
            model = module.Net()
            x = torch.randn(spec.batch_size, *shape)
            y = torch.randint(0, facts.num_classes, (spec.batch_size,))
            if layout == "channels_last":
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer = make_optimizer(model.parameters(), msgspec.structs.replace(spec, lr=1e-3))
            loss_fn = torch.nn.CrossEntropyLoss()

            def step() -> None:
                loss = loss_fn(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            for _ in range(3):  # warm-up: oneDNN picks and caches its kernels
                step()
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            per_step = (time.perf_counter() - started) / args.steps
            seconds[layout] = per_step * n_train / spec.batch_size
        print(f"{item.cid} {getattr(module.Net, '__doc__', '') or ''}".strip()[:100])
        print(f"    batch {spec.batch_size}: nchw {seconds['nchw']:.1f} s/epoch, channels_last "
              f"{seconds['channels_last']:.1f} s/epoch, speed-up {seconds['nchw'] / seconds['channels_last']:.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
