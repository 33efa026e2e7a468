"""`researcher bench`: what isolation costs, measured three ways in one run.

The same fixed set of small digits candidates (rendered by the assembler from
the offline planner's first proposals, a few epochs, one seed) is trained:

1. directly in this process, no isolation (the baseline);
2. sandboxed cold: one fresh container per job, start-up in the job's path;
3. sandboxed warm: containers started ahead by the warm pool, ``--parallel`` at once.

Figures are printed, never asserted: ``overhead_ratio`` is warm wall / direct
wall; hand-off latency is job sent -> check report back (the model imported and
checked, training about to start).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from orchestrator.sandbox.config import SandboxConfig
from sandbox_image.protocol import Job, TrainSpec


@dataclass(frozen=True)
class BenchCandidate:
    """One fixed candidate: its id, source and training settings."""

    cid: str
    source: str
    train: TrainSpec


@dataclass
class ModeResult:
    """Wall time and per-job figures of one way of running the set."""

    name: str
    wall_s: float = 0.0
    handoffs_s: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self, n: int) -> dict:
        """JSON-ready figures."""
        data = {"wall_s": round(self.wall_s, 3), "candidates_per_min": round(60 * n / self.wall_s, 2) if self.wall_s else None,
                "failures": self.failures}
        if self.handoffs_s:
            ordered = sorted(self.handoffs_s)
            data["handoff_ms_p50"] = round(1000 * statistics.median(ordered), 1)
            data["handoff_ms_p95"] = round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)
        if self.peaks:
            data["peak_memory_mb_max"] = round(max(self.peaks) / 2**20, 1)
            data["peak_memory_mb_median"] = round(statistics.median(self.peaks) / 2**20, 1)
        return data


def candidates(facts, count: int, epochs: int) -> list[BenchCandidate]:
    """The fixed set: the offline planner's first ``count`` proposals, rendered, ``epochs`` each, one seed."""
    from orchestrator.planning.assembler import render
    from orchestrator.planning.offline import OfflinePlanner
    from orchestrator.research import planner_facts

    pfacts = planner_facts(facts)
    planner = OfflinePlanner(pfacts, seed=0, n_startup_trials=count)
    out = []
    for i in range(count):
        proposal = planner.propose([])
        source = render(proposal.config, input_shape=pfacts.input_shape, num_classes=pfacts.num_classes)
        train = msgspec.structs.replace(proposal.train, epochs=epochs, seeds=(0,), patience=0)
        out.append(BenchCandidate(cid=f"b{i + 1:02d}", source=source, train=train))
    return out


def run_direct(items, prepared, threads: int) -> ModeResult:
    """Baseline: train in this process with the same recipe, no container."""
    import torch

    from evaluator.recipe import train_seed, warm_up

    torch.set_num_threads(threads)
    warm_up()
    data = prepared.train_data()
    result = ModeResult("direct")
    start = time.monotonic()
    for item in items:
        module = types.ModuleType(f"bench_{item.cid}")
        exec(compile(item.source, f"<{item.cid}>", "exec"), module.__dict__)  # noqa: S102 - our own rendered source
        seed = train_seed(module.Net, data, item.train, seed=0)
        result.accuracies.append(float((seed.logits.argmax(1) == prepared.test_y).mean()))
    result.wall_s = time.monotonic() - start
    return result


def _job(item: BenchCandidate, facts, spec, config: SandboxConfig) -> Job:
    return Job(job_id=item.cid, source=item.source, class_name="Net", input_shape=tuple(facts.input_shape),
               num_classes=facts.num_classes, threads=config.threads, train=item.train, data=spec)


def _collect(result: ModeResult, job_result, prepared) -> None:
    if job_result.failure is not None:
        result.failures.append(f"{job_result.job_id}: {job_result.failure.kind.value}")
        return
    result.handoffs_s.append(job_result.handoff_seconds)
    if job_result.peak_memory_bytes:
        result.peaks.append(job_result.peak_memory_bytes)
    logits = job_result.logits[0]
    result.accuracies.append(float((logits.argmax(1) == prepared.test_y).mean()))


def run_cold(items, prepared, spec, data_dir: Path, backend, config: SandboxConfig) -> ModeResult:
    """One fresh container per job, start-up included in every job."""
    from orchestrator.sandbox.runner import run_job

    facts = prepared.facts()
    result = ModeResult("sandbox_cold")
    start = time.monotonic()
    for item in items:
        job_result = run_job(backend, _job(item, facts, spec, config), config, data_dir=data_dir, n_test=facts.n_test)
        _collect(result, job_result, prepared)
    result.wall_s = time.monotonic() - start
    return result


def run_warm(items, prepared, spec, data_dir: Path, backend, config: SandboxConfig, parallel: int) -> ModeResult:
    """Warm pool: slots Ready before the jobs come; ``parallel`` jobs at once."""
    from orchestrator.sandbox.pool import WarmPool
    from orchestrator.sandbox.runner import execute

    facts = prepared.facts()
    result = ModeResult(f"sandbox_warm_parallel{parallel}")
    with WarmPool(backend, config, size=parallel, data_dir=data_dir) as pool:
        _wait_full(pool, parallel)  # fill the pool first: its start-up is not the jobs'

        def one(item):
            with pool.acquire() as slot:
                return execute(slot, _job(item, facts, spec, config), n_test=facts.n_test)

        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=parallel) as workers:
            for job_result in workers.map(one, items):
                _collect(result, job_result, prepared)
        result.wall_s = time.monotonic() - start
    return result


def _wait_full(pool, size: int, timeout_s: float = 300.0) -> None:
    until = time.monotonic() + timeout_s
    while pool.stats["ready"] < size and time.monotonic() < until:
        time.sleep(0.05)


def bench(*, count: int, epochs: int, parallel: int, backend_factory, image: str, memory: str,
          progress=print) -> dict:
    """Run the three modes on the same set and return the figures."""
    import os
    import shutil
    import tempfile

    from orchestrator.training import load_prepared

    cores = os.cpu_count() or 1
    prepared = load_prepared("digits", None)
    facts = prepared.facts()
    items = candidates(facts, count, epochs)
    scratch = Path(tempfile.mkdtemp(prefix="researcher-bench-"))
    report: dict = {"candidates": count, "epochs": epochs, "dataset": "digits", "host_cores": cores}
    try:
        spec = prepared.write_sandbox_dir(scratch / "data")
        one = SandboxConfig(image=image, memory=memory, cpus=1.0, timeout_s=600)
        progress(f"bench: {count} digits candidates x {epochs} epochs, 1 seed, 1 thread each")
        direct = run_direct(items, prepared, threads=1)
        progress(f"  direct (no isolation):        {direct.wall_s:7.1f} s")
        backend = backend_factory()
        try:
            cold = run_cold(items, prepared, spec, scratch / "data", backend, one)
            progress(f"  sandboxed cold (1 per job):   {cold.wall_s:7.1f} s")
            warm1 = run_warm(items, prepared, spec, scratch / "data", backend, one, 1)
            progress(f"  sandboxed warm, parallel 1:   {warm1.wall_s:7.1f} s")
            modes = [direct, cold, warm1]
            if parallel > 1:
                share = msgspec.structs.replace(one, cpus=float(max(1, cores // parallel)))
                warmn = run_warm(items, prepared, spec, scratch / "data", backend, share, parallel)
                progress(f"  sandboxed warm, parallel {parallel}:   {warmn.wall_s:7.1f} s")
                modes.append(warmn)
        finally:
            backend.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report["modes"] = {m.name: m.summary(count) for m in modes}
    report["overhead_ratio"] = round(warm1.wall_s / direct.wall_s, 3)
    report["cold_overhead_ratio"] = round(cold.wall_s / direct.wall_s, 3)
    report["handoff_ms_p50"] = report["modes"][warm1.name].get("handoff_ms_p50")
    report["handoff_ms_p95"] = report["modes"][warm1.name].get("handoff_ms_p95")
    report["candidates_per_min"] = {m.name: report["modes"][m.name]["candidates_per_min"] for m in modes}
    report["peak_memory_mb_per_container"] = report["modes"][warm1.name].get("peak_memory_mb_max")
    if parallel > 1:
        report["parallel_speedup"] = round(warm1.wall_s / modes[-1].wall_s, 3)
    report["accuracy_mean"] = {m.name: round(statistics.fmean(m.accuracies), 4) for m in modes if m.accuracies}
    return report


def print_report(report: dict, *, as_json: bool, stream=None) -> None:
    """One JSON object, or a short table."""
    stream = stream or sys.stdout
    if as_json:
        stream.write(json.dumps(report, indent=2) + "\n")
        return
    stream.write(f"\noverhead_ratio (warm sandbox / direct): {report['overhead_ratio']}\n")
    stream.write(f"cold_overhead_ratio: {report['cold_overhead_ratio']}\n")
    stream.write(f"hand-off (job sent -> training starts) p50 {report['handoff_ms_p50']} ms, p95 {report['handoff_ms_p95']} ms\n")
    for name, cpm in report["candidates_per_min"].items():
        stream.write(f"{name:<28} {cpm:>7} candidates/min\n")
    if "parallel_speedup" in report:
        stream.write(f"parallel speed-up: {report['parallel_speedup']}x\n")
    stream.write(f"peak memory per container: {report['peak_memory_mb_per_container']} MB\n")
