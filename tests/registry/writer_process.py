"""A run writer for the kill test: records candidates forever, saying what it committed.

Usage: python -m tests.registry.writer_process RUN_DIR. Prints ``added <id>``,
``running <id>`` and ``committed <id>`` after each call returns, so whatever was
printed is on disk.
"""

from __future__ import annotations

import sys

from evaluator.metrics import ClassRow, MetricSummary, Scores
from orchestrator.registry import Registry
from tests.registry import factories as f


def tiny_scores(i: int) -> Scores:
    """Hand-made scores (no torch import: the writer must start fast)."""
    acc = MetricSummary(name="accuracy", higher_is_better=True, mean=0.5 + i / 1000, std=0.01,
                        ci95_low=0.49, ci95_high=0.51 + i / 1000, per_seed={0: 0.5, 1: 0.5})
    rows = tuple(ClassRow(name=n, support=5, precision=0.5, recall=0.5, f1=0.5) for n in "ab")
    return Scores(seeds=(0, 1), n_test=10, class_names=("a", "b"), top_k=None,
                  metrics={"accuracy": acc}, per_class=rows, confusion=((3, 2), (2, 3)))


def main(run_dir: str) -> None:
    """Write candidates until killed."""
    registry = Registry.create(run_dir, f.settings(), plots=False)
    i = 0
    while True:
        i += 1
        cid = registry.add_candidate(f.proposal(i), f.SOURCE + f"# candidate {i}\n")
        print("added", cid, flush=True)
        registry.mark_running(cid)
        print("running", cid, flush=True)
        if i % 3 == 0:
            registry.finish_candidate(cid, failure=f.failure(), seconds=0.1)
        else:
            registry.finish_candidate(cid, scores=tiny_scores(i), selection=tiny_scores(i), check=f.check(i), seconds=0.1)
        registry.record_llm_call(f.llm_call())
        print("committed", cid, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
