"""The sandbox's training recipe on CPU and on CUDA, for a GPU machine without Docker.

`researcher bench` measures isolation through Docker. This script is for a GPU
machine that has no engine (CI never has a GPU): it trains `researcher bench`'s
fixed candidate sets - the offline planner's first proposals, rendered by the
assembler - with the same recipe the sandbox runs, four ways on the same data:

- ``direct_cpu`` / ``direct_cuda``: the recipe in this process;
- ``worker_cpu`` / ``worker_cuda``: the real sandbox worker (``python -m
  sandbox_image.worker``) as a local subprocess behind the warm pool, ZeroMQ and
  msgspec. UNSAFE, no container: it measures the recipe and the protocol on the
  device, not the isolation.

Two steps, because the offline planner (Optuna) need not be installed where the GPU is::

    python scripts/device_bench.py render --out candidates.json      # anywhere with the project
    python scripts/device_bench.py run --candidates candidates.json \\
        [--data-dir DIR] [--devices cpu,cuda] [--out result.json]      # on the GPU machine

``run`` prints one JSON object: per dataset and mode, wall time, candidates per
minute, test accuracy, hand-off latency (worker modes), ``recipe_s_total`` (the
recipe's own seconds: training, per-epoch validation and test prediction),
``train_samples_per_recipe_s`` (training samples x epochs / those seconds), and
``cuda_speedup`` (CPU wall / CUDA wall) for each way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.bench import BenchCandidate, ModeResult, run_direct, run_warm  # noqa: E402
from sandbox_image.protocol import TrainSpec  # noqa: E402

#: dataset -> (candidates, epochs, max_train): digits is `researcher bench`'s own set;
#: Fashion-MNIST is big enough for a GPU to matter and small enough for a CPU baseline.
SETS = {"digits": (12, 3, None), "fashion_mnist": (4, 1, 10000)}


def render(out: Path, names: list[str], count: int | None = None, epochs: int | None = None) -> None:
    """Write each set's rendered sources and training settings (needs Optuna)."""
    from orchestrator.bench import candidates
    from orchestrator.evaluation import load_prepared

    doc = {}
    for name in names:
        set_count, set_epochs, max_train = SETS[name]
        facts = load_prepared(name, None).facts()
        items = candidates(facts, count or set_count, epochs or set_epochs)
        doc[name] = {"max_train": max_train,
                     "candidates": [{"cid": c.cid, "source": c.source, "train": msgspec.to_builtins(c.train)}
                                    for c in items]}
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v['candidates'])}" for k, v in doc.items()))


def _load(path: Path) -> dict[str, tuple[int | None, list[BenchCandidate]]]:
    doc = json.loads(path.read_text())
    return {name: (entry["max_train"],
                   [BenchCandidate(c["cid"], c["source"], msgspec.convert(c["train"], TrainSpec)) for c in entry["candidates"]])
            for name, entry in doc.items()}


def _figures(mode: ModeResult, n: int, samples_per_candidate: int) -> dict:
    out = mode.summary(n)
    out.pop("host_cpu_s_per_candidate", None)
    out["accuracy_mean"] = round(statistics.fmean(mode.accuracies), 4) if mode.accuracies else None
    if mode.train_s:
        out["recipe_s_total"] = round(sum(mode.train_s), 3)
        out["train_samples_per_recipe_s"] = round(samples_per_candidate * n / sum(mode.train_s), 1)
    return out


def run(args: argparse.Namespace) -> dict:
    """Train every set every way; return the figures."""
    import torch

    from evaluator.datasets import load_dataset
    from evaluator.prepare import prepare
    from orchestrator.sandbox.config import SandboxConfig, validate
    from orchestrator.sandbox.local import SubprocessBackend

    devices = args.devices.split(",")
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("device_bench: --devices names cuda but torch sees no GPU here")
    cores = os.cpu_count() or 1
    threads = args.threads or cores
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    report: dict = {"host_cores": cores, "threads_cpu": threads, "spare_slots": args.spare, "kernel": platform.release(),
                    "autogroup": autogroup.read_text().strip() if autogroup.exists() else None, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "datasets": {}}
    sets = _load(args.candidates)
    for name in args.datasets.split(","):
        max_train, items = sets[name]
        prepared = prepare(load_dataset(name, args.data_dir), max_train=max_train)
        facts = prepared.facts()
        per = {"train": facts.n_train, "test": facts.n_test, "candidates": len(items),
               "epochs": items[0].train.epochs, "modes": {}}
        samples = facts.n_train * items[0].train.epochs
        log(f"{name}: {len(items)} candidates x {items[0].train.epochs} epochs, {facts.n_train} training samples")
        with tempfile.TemporaryDirectory(prefix="device-bench-") as scratch:
            spec = prepared.write_sandbox_dir(Path(scratch) / "data")
            for device in devices:
                mode = run_direct(items, prepared, threads=threads, device=device, name=f"direct_{device}")
                per["modes"][mode.name] = _figures(mode, len(items), samples)
                log(f"  {mode.name:<12} {mode.wall_s:7.1f} s  acc {per['modes'][mode.name]['accuracy_mean']}")
                _save(args.out, report | {"datasets": report["datasets"] | {name: per}})
                config = validate(SandboxConfig(cpus=float(threads), memory="16g", timeout_s=900, device=device,
                                                jobs_dir=scratch))
                backend = SubprocessBackend()
                mode = run_warm(items, prepared, spec, Path(scratch) / "data", backend, config, 1, args.spare,
                                name=f"worker_{device}")
                per["modes"][mode.name] = _figures(mode, len(items), samples)
                log(f"  {mode.name:<12} {mode.wall_s:7.1f} s  acc {per['modes'][mode.name]['accuracy_mean']}"
                    f"  failures {mode.failures}")
                _save(args.out, report | {"datasets": report["datasets"] | {name: per}})
        if {"cpu", "cuda"} <= set(devices):
            m = per["modes"]
            per["cuda_speedup"] = {way: round(m[f"{way}_cpu"]["wall_s"] / m[f"{way}_cuda"]["wall_s"], 2)
                                   for way in ("direct", "worker")}
        report["datasets"][name] = per
    return report


def _save(path: Path | None, report: dict) -> None:
    """Write what is measured so far: a run cut short still leaves its figures."""
    if path is not None:
        path.write_text(json.dumps(report, indent=2) + "\n")


def log(line: str) -> None:
    """Progress on stderr."""
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    r = sub.add_parser("render", help="render the candidate sets to JSON (needs the offline planner)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--datasets", default=",".join(SETS), help=f"comma-separated (default: {','.join(SETS)})")
    r.add_argument("--candidates", type=int, help="candidates per set (default: the set's own)")
    r.add_argument("--epochs", type=int, help="epochs per candidate (default: the set's own)")
    g = sub.add_parser("run", help="train them on each device, directly and through the worker")
    g.add_argument("--candidates", type=Path, required=True, help="JSON written by `render`")
    g.add_argument("--datasets", default=",".join(SETS), help=f"comma-separated (default: {','.join(SETS)})")
    g.add_argument("--data-dir", help="folder with FashionMNIST/raw/*.gz when the Debian package is absent")
    g.add_argument("--devices", default="cpu,cuda", help="comma-separated: cpu, cuda (default: cpu,cuda)")
    g.add_argument("--threads", type=int, default=0, help="torch threads on CPU (default: every core)")
    g.add_argument("--spare", type=int, default=1, help="warm-pool spare slots of the worker modes (default: 1, as `run`)")
    g.add_argument("--out", type=Path, help="also write the JSON here, updated after each mode")
    args = parser.parse_args(argv)
    # SIGTERM (a timeout, kill) unwinds like Ctrl-C: the pools close and no worker is left running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.step == "render":
        render(args.out, args.datasets.split(","), args.candidates, args.epochs)
        return 0
    report = run(args)
    print(json.dumps(report, indent=2))
    _save(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
