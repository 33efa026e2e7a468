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

import contextlib
import json
import os
import statistics
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from orchestrator.exceptions import UsageError
from orchestrator.sandbox.config import DEFAULT_SPARE, SandboxConfig, validate
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
    phases: list[dict[str, float]] = field(default_factory=list)  # cold mode: seconds per phase per job
    logits_bytes: list[int] = field(default_factory=list)
    train_s: list[float] = field(default_factory=list)  # direct mode: training seconds per candidate
    cpu_s: float | None = None  # busy CPU seconds of the whole host during the mode
    nodes: list[dict] = field(default_factory=list)  # cluster mode: jobs per node

    def summary(self, n: int) -> dict:
        """JSON-ready figures."""
        data = {"wall_s": round(self.wall_s, 3), "candidates_per_min": round(60 * n / self.wall_s, 2) if self.wall_s else None,
                "host_cpu_s_per_candidate": None if self.cpu_s is None else round(self.cpu_s / n, 3),
                "failures": self.failures}
        if self.handoffs_s:
            ordered = sorted(self.handoffs_s)
            data["handoff_ms_p50"] = round(1000 * statistics.median(ordered), 1)
            data["handoff_ms_p95"] = round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)
        if self.phases:
            data["phase_ms_median"] = {k: round(1000 * statistics.median(p[k] for p in self.phases), 1) for k in PHASES}
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


def run_direct(items, prepared, threads: int, device: str = "cpu", name: str = "direct") -> ModeResult:
    """Baseline: train in this process with the same recipe, no container."""
    import torch

    from evaluator.recipe import train_seed, warm_up

    torch.set_num_threads(threads)
    warm_up()
    data = prepared.train_data()
    result = ModeResult(name)
    with _clock(result):
        for item in items:
            module = types.ModuleType(f"bench_{item.cid}")
            exec(compile(item.source, f"<{item.cid}>", "exec"), module.__dict__)  # noqa: S102 - our own rendered source
            seed = train_seed(module.Net, data, item.train, seed=0, device=device)
            result.accuracies.append(float((seed.logits.argmax(1) == prepared.test_y).mean()))
            result.train_s.append(seed.seconds)
    return result


@contextlib.contextmanager
def _clock(result: ModeResult):
    """Set the wall time and the host's busy CPU time (every process, dockerd included) of a mode."""
    cpu, start = host_cpu_seconds(), time.monotonic()
    try:
        yield
    finally:
        result.wall_s = time.monotonic() - start
        after = host_cpu_seconds()
        result.cpu_s = None if cpu is None or after is None else after - cpu


def host_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole host since boot (Linux /proc/stat), None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...: everything but idle and iowait
    ticks = [int(v) for v in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _job(item: BenchCandidate, facts, spec, config: SandboxConfig) -> Job:
    return Job(job_id=item.cid, source=item.source, class_name="Net", input_shape=tuple(facts.input_shape),
               num_classes=facts.num_classes, device=config.device, threads=config.threads, train=item.train,
               data=spec)


def _collect(result: ModeResult, job_result, prepared) -> None:
    if job_result.failure is not None:
        result.failures.append(f"{job_result.job_id}: {job_result.failure.kind.value}")
        return
    result.handoffs_s.append(job_result.handoff_seconds)
    if job_result.peak_memory_bytes:
        result.peaks.append(job_result.peak_memory_bytes)
    result.train_s.extend(p.seconds for p in job_result.predictions)
    _, logits = prepared.split_eval(job_result.logits[0])  # the sandbox predicted selection and test inputs
    result.accuracies.append(float((logits.argmax(1) == prepared.test_y).mean()))


#: Phases of one cold job, in order, as the profile reports them.
PHASES = ("prepare", "container_start", "imports", "handoff", "train", "result", "teardown")


def run_cold(items, prepared, spec, data_dir: Path, backend, config: SandboxConfig) -> ModeResult:
    """One fresh container per job, start-up included in every job; each phase timed."""
    facts = prepared.facts()
    result = ModeResult("sandbox_cold")
    with _clock(result):
        for item in items:
            _run_cold_one(_job(item, facts, spec, config), prepared, data_dir, backend, config, result)
    return result


def _run_cold_one(job: Job, prepared, data_dir: Path, backend, config: SandboxConfig, result: ModeResult) -> None:
    """``runner.run_job`` taken apart so that each phase of a cold job is timed."""
    from orchestrator.sandbox.runner import Slot, execute

    t0 = time.monotonic()
    slot = Slot(backend, config, data_dir=data_dir, slot_id=job.job_id)  # job dir and socket
    try:
        t1 = time.monotonic()
        slot.start()  # docker create + start
        t2 = time.monotonic()
        slot.wait_ready()  # python, worker and torch imports in the container
        t3 = time.monotonic()
        job_result = execute(slot, job, n_test=prepared.n_eval)
        t4 = time.monotonic()
    finally:
        slot.close()  # docker rm -f, socket and job dir
    t5 = time.monotonic()
    _collect(result, job_result, prepared)
    train = sum(p.seconds for p in job_result.predictions)
    handoff = job_result.handoff_seconds
    result.phases.append({"prepare": t1 - t0, "container_start": t2 - t1, "imports": t3 - t2, "handoff": handoff,
                          "train": train, "result": max(0.0, (t4 - t3) - handoff - train), "teardown": t5 - t4})
    result.logits_bytes.extend(len(p.logits) for p in job_result.predictions)


def run_warm(items, prepared, spec, data_dir: Path, backend, config: SandboxConfig, parallel: int,
             spare: int = DEFAULT_SPARE, name: str | None = None) -> ModeResult:
    """Warm pool: slots Ready before the jobs come; ``parallel`` jobs at once."""
    from orchestrator.sandbox.pool import WarmPool

    result = ModeResult(name or f"sandbox_warm_parallel{parallel}")
    with WarmPool(backend, config, size=parallel, spare=spare, data_dir=data_dir) as pool:
        _wait_full(pool, parallel + spare)  # fill the pool first: its start-up is not the jobs'
        _through(pool, items, prepared, spec, config, parallel, result)
    return result


def _through(pool, items, prepared, spec, config: SandboxConfig, parallel: int, result: ModeResult) -> None:
    """Run ``items`` on ``pool``'s slots (a warm pool or a cluster's), ``parallel`` at once, timed."""
    from orchestrator.sandbox.runner import execute

    facts = prepared.facts()

    def one(item):
        with pool.acquire() as slot:
            return execute(slot, _job(item, facts, spec, config), n_test=prepared.n_eval)

    with _clock(result), ThreadPoolExecutor(max_workers=parallel) as workers:
        for job_result in workers.map(one, items):
            _collect(result, job_result, prepared)


def run_cluster(items, prepared, spec, data_dir: Path, address: str, config: SandboxConfig, parallel: int) -> ModeResult:
    """The same jobs through a Ray cluster's sandbox hosts (``--cluster``), ``parallel`` at once."""
    from orchestrator.cluster.pool import ClusterPool

    result = ModeResult(f"cluster_parallel{parallel}")
    with ClusterPool(address, config, data_dir=data_dir) as pool:
        ready = pool.wait_ready(parallel)  # hosts started, data staged: not the jobs' time
        if ready < parallel:
            raise UsageError(f"the cluster at {address} has {ready} slot(s) of {config.cpus:g} CPU(s); "
                             f"--parallel {parallel} needs {parallel}: add nodes or lower --parallel")
        time.sleep(5.0)  # each host's slots finish their imports, as the local warm pool is filled first
        _through(pool, items, prepared, spec, config, parallel, result)
        result.nodes = pool.nodes()
    return result


def _bench_set(count: int, epochs: int, image: str, memory: str, jobs_dir: str | None):
    """The prepared digits, the fixed candidates, the one-CPU sandbox config and a private scratch dir."""
    from orchestrator.evaluation import load_prepared
    from orchestrator.sandbox.runner import make_private_dir

    prepared = load_prepared("digits", None)
    items = candidates(prepared.facts(), count, epochs)
    one = validate(SandboxConfig(image=image, memory=memory, cpus=1.0, timeout_s=600, jobs_dir=jobs_dir))
    scratch = make_private_dir(Path(one.jobs_root), "researcher-bench-")  # same path in a container
    return prepared, items, one, scratch


def bench_cluster(*, address: str, count: int, epochs: int, parallel: int, backend_factory, image: str, memory: str,
                  progress=print, jobs_dir: str | None = None, spare: int = DEFAULT_SPARE) -> dict:
    """Dispatch overhead of ``--cluster``: the same set through the local warm pool, then the cluster.

    Both run ``parallel`` jobs at once with one CPU per sandbox; ``cluster_overhead_ratio``
    is cluster wall / local warm wall (nodes on this host share its Docker engine).
    """
    import shutil

    prepared, items, one, scratch = _bench_set(count, epochs, image, memory, jobs_dir)
    report: dict = {"candidates": count, "epochs": epochs, "dataset": "digits", "parallel": parallel,
                    "cluster": address, "host_cores": os.cpu_count() or 1}
    try:
        spec = prepared.write_sandbox_dir(scratch / "data")
        progress(f"bench --cluster: {count} digits candidates x {epochs} epochs, 1 seed, 1 CPU each, {parallel} at once")
        backend = backend_factory()
        try:
            warm = run_warm(items, prepared, spec, scratch / "data", backend, one, parallel, spare,
                            name=f"local_warm_parallel{parallel}")
        finally:
            backend.close()
        progress(f"  local warm pool:  {warm.wall_s:7.1f} s")
        cluster = run_cluster(items, prepared, spec, scratch / "data", address, one, parallel)
        progress(f"  Ray cluster:      {cluster.wall_s:7.1f} s on {len(cluster.nodes)} node(s)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    modes = [warm, cluster]
    report["modes"] = {m.name: m.summary(count) for m in modes}
    report["nodes"] = [{"node": n["node"], "jobs": n["jobs"]} for n in cluster.nodes]
    report["train_s_per_candidate_median"] = round(statistics.median(warm.train_s), 2) if warm.train_s else None
    report["cluster_overhead_ratio"] = round(cluster.wall_s / warm.wall_s, 3)
    report["handoff_ms_p50"] = {m.name: report["modes"][m.name].get("handoff_ms_p50") for m in modes}
    report["accuracy_mean"] = {m.name: round(statistics.fmean(m.accuracies), 4) for m in modes if m.accuracies}
    return report


def _print_cluster_report(report: dict, stream) -> None:
    stream.write(f"\ncluster_overhead_ratio (Ray cluster / local warm pool): {report['cluster_overhead_ratio']}\n")
    stream.write(f"training per candidate (median): {report['train_s_per_candidate_median']} s\n")
    for name, p50 in report["handoff_ms_p50"].items():
        stream.write(f"{name:<28} hand-off p50 {p50} ms, {report['modes'][name]['candidates_per_min']} candidates/min, "
                     f"failures {len(report['modes'][name]['failures'])}\n")
    stream.write("jobs per node: " + ", ".join(f"{n['node']} {n['jobs']}" for n in report["nodes"]) + "\n")


def _wait_full(pool, size: int, timeout_s: float = 300.0) -> None:
    until = time.monotonic() + timeout_s
    while pool.stats["ready"] < size and time.monotonic() < until:
        time.sleep(0.05)


def bench(*, count: int, epochs: int, parallel: int, backend_factory, image: str, memory: str,
          progress=print, jobs_dir: str | None = None, spare: int = DEFAULT_SPARE) -> dict:
    """Run the three modes on the same set and return the figures."""
    import shutil

    cores = os.cpu_count() or 1
    prepared, items, one, scratch = _bench_set(count, epochs, image, memory, jobs_dir)
    report: dict = {"candidates": count, "epochs": epochs, "dataset": "digits", "host_cores": cores, "spare_slots": spare}
    try:
        spec = prepared.write_sandbox_dir(scratch / "data")
        progress(f"bench: {count} digits candidates x {epochs} epochs, 1 seed, 1 thread each")
        direct = run_direct(items, prepared, threads=1)
        progress(f"  direct (no isolation):        {direct.wall_s:7.1f} s")
        backend = backend_factory()
        try:
            cold = run_cold(items, prepared, spec, scratch / "data", backend, one)
            progress(f"  sandboxed cold (1 per job):   {cold.wall_s:7.1f} s")
            warm1 = run_warm(items, prepared, spec, scratch / "data", backend, one, 1, spare)
            progress(f"  sandboxed warm, parallel 1:   {warm1.wall_s:7.1f} s")
            modes = [direct, cold, warm1]
            if parallel > 1:
                share = msgspec.structs.replace(one, cpus=float(max(1, cores // parallel)))
                warmn = run_warm(items, prepared, spec, scratch / "data", backend, share, parallel, spare)
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
    report["profile"] = profile(direct, cold, modes, count)
    return report


def profile(direct: ModeResult, cold: ModeResult, modes: list[ModeResult], count: int) -> dict:
    """Where a sandboxed candidate's time goes: cold phases, and CPU per candidate by mode."""
    phases = {k: statistics.median(p[k] for p in cold.phases) for k in PHASES} if cold.phases else {}
    fixed = sum(phases.get(k, 0.0) for k in ("prepare", "container_start", "imports", "teardown"))
    out = {
        "cold_phase_ms_median": {k: round(1000 * v, 1) for k, v in phases.items()},
        "fixed_cost_ms_per_container": round(1000 * fixed, 1),
        "direct_train_ms_median": round(1000 * statistics.median(direct.train_s), 1) if direct.train_s else None,
        "logits_kb_per_seed": round(statistics.median(cold.logits_bytes) / 1024, 1) if cold.logits_bytes else None,
        "host_cpu_s_per_candidate": {m.name: m.summary(count)["host_cpu_s_per_candidate"] for m in modes},
    }
    cpu = out["host_cpu_s_per_candidate"]
    if cpu.get("direct") is not None and len(modes) > 2 and cpu.get(modes[2].name) is not None:
        out["isolation_cpu_s_per_candidate"] = round(cpu[modes[2].name] - cpu["direct"], 3)
    return out


def print_report(report: dict, *, as_json: bool, stream=None) -> None:
    """One JSON object, or a short table."""
    stream = stream or sys.stdout
    if as_json:
        stream.write(json.dumps(report, indent=2) + "\n")
        return
    if "cluster_overhead_ratio" in report:  # bench --cluster
        _print_cluster_report(report, stream)
        return
    stream.write(f"\noverhead_ratio (warm sandbox / direct): {report['overhead_ratio']}\n")
    stream.write(f"cold_overhead_ratio: {report['cold_overhead_ratio']}\n")
    stream.write(f"hand-off (job sent -> training starts) p50 {report['handoff_ms_p50']} ms, p95 {report['handoff_ms_p95']} ms\n")
    for name, cpm in report["candidates_per_min"].items():
        stream.write(f"{name:<28} {cpm:>7} candidates/min\n")
    if "parallel_speedup" in report:
        stream.write(f"parallel speed-up: {report['parallel_speedup']}x\n")
    stream.write(f"peak memory per container: {report['peak_memory_mb_per_container']} MB\n")
    prof = report.get("profile") or {}
    if prof.get("cold_phase_ms_median"):
        phases = ", ".join(f"{k} {v:g}" for k, v in prof["cold_phase_ms_median"].items())
        stream.write(f"cold job phases (median ms): {phases}\n")
        stream.write(f"fixed cost per container (prepare+container_start+imports+teardown): {prof['fixed_cost_ms_per_container']:g} ms "
                     f"vs {prof['direct_train_ms_median']} ms of training per candidate (direct)\n")
    if prof.get("isolation_cpu_s_per_candidate") is not None:
        stream.write(f"host CPU per candidate: {prof['host_cpu_s_per_candidate']} s; isolation adds "
                     f"{prof['isolation_cpu_s_per_candidate']:g} s of CPU per candidate\n")
