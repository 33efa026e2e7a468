"""The research loop's search on a GPU machine without Docker: the issue-10 figure, measured.

``researcher run`` puts every candidate in a hardened container; a GPU machine lent for
measurement has no Docker engine (CI never has a GPU). This script runs the same run as
``researcher run --dataset fashion_mnist --time-budget 600 --device cuda`` - the real
offline planner (Optuna TPE + Hyperband, budget fitting, the final training), the real
research loop, registry and report, the sandbox's training recipe - with one difference:
the worker (``python -m sandbox_image.worker``) runs as a local process behind the warm
pool, ZeroMQ and msgspec (``SubprocessBackend``). UNSAFE, no container: it measures the
search and the recipe on the device, not the isolation. It takes no LLM: the only code it
runs is what the assembler renders from the planner's layer configs.

    python scripts/device_search.py --data-dir DIR [--time-budget 600] [--device cuda] --out OUT

``--data-dir`` holds ``FashionMNIST/raw/*.gz`` (torchvision's layout) where the Debian
package is absent. Prints one JSON object (also ``OUT/search.json``): the chosen model's
test accuracy (mean, 95% CI, per seed) and the selection score that chose it, every
candidate (design, epochs, seconds, selection, test), the time-to-accuracy points (the
chosen model's scores after each finished candidate against wall time), the stop reason;
``OUT`` also gets the run's ``report.html`` and its registry. ``scripts/device_search.sh``
sets up a bare GPU machine (wheels, data) and runs this.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Marks the run as measured without isolation wherever its name is shown.
NAME_PREFIX = "unsafe-local-worker"


def _device_facts(device: str) -> dict:
    import torch

    facts = {"torch": torch.__version__, "host_cores": os.cpu_count(), "kernel": platform.release(),
             "device": device, "gpu": None}
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("device_search: --device cuda but torch sees no GPU here (use --device cpu to try "
                             "the script without one)")
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def _candidate(record, metric: str, started: float) -> dict:
    selection, test = record.selection_summary(metric), record.summary(metric)
    return {
        "id": record.id, "status": record.status, "pruned": record.pruned, "truncated": record.truncated,
        "design": record.proposal.rationale, "params": record.params, "epochs": record.proposal.train.epochs,
        "epochs_trained": len(record.val_curve()), "fit_val": record.proposal.train.fit_val,
        "seconds": round(record.seconds, 1),
        "finished_s": None if record.finished is None else round(record.finished - started, 1),
        "selection": None if selection is None else round(selection.mean, 4),
        "test": None if test is None else round(test.mean, 4),
        "failure": None if record.failure is None else f"{record.failure.kind.value}: {record.failure.message[:200]}",
    }


def summarize(run_dir: Path, wall_s: float, facts: dict) -> dict:
    """The figures of a finished run, read back from its registry as its report reads them."""
    from orchestrator.registry import Registry
    from orchestrator.report.content import gather
    from orchestrator.report.figures import time_to_accuracy

    with Registry.open(run_dir, readonly=True) as registry:
        data = gather(registry)
    metric, best = data.metric, data.best
    chosen = None
    if best is not None:
        test, selection = best.summary(metric), best.selection_summary(metric)
        chosen = {"id": best.id, "params": best.params, "design": best.proposal.rationale,
                  "test_mean": round(test.mean, 4), "test_ci95": [test.ci95_low, test.ci95_high],
                  "test_per_seed": {str(k): round(v, 4) for k, v in test.per_seed.items()},
                  "selection_mean": None if selection is None else round(selection.mean, 4)}
    return {"backend": "subprocess worker, UNSAFE: no container (measurement only)", **facts,
            "run_dir": str(run_dir), "status": data.run.status, "stop_reason": data.run.message,
            "wall_s": round(wall_s, 1), "metric": metric, "chosen": chosen,
            "candidates": [_candidate(r, metric, data.run.started) for r in data.records],
            "time_to_accuracy": [{"seconds": round(p.seconds, 1), "selection": round(p.selection, 4),
                                  "test": None if p.test is None else round(p.test, 4)}
                                 for p in time_to_accuracy(data)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--data-dir", help="folder with FashionMNIST/raw/*.gz (default: the Debian package)")
    parser.add_argument("--time-budget", type=float, default=600.0, help="seconds of search (default: 600)")
    parser.add_argument("--device", default="cuda", help="cuda or cpu (default: cuda)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per candidate (default: 3, as `run`)")
    parser.add_argument("--parallel", type=int, default=1, help="candidates at once (default: 1: one GPU)")
    parser.add_argument("--max-candidates", type=int, default=None, help="default: no limit, the budget decides")
    parser.add_argument("--goal", help="as `run --goal` (default: the dataset's, 'NAME classifier with the best "
                        "accuracy within the budget', no target); one without a number has no stop value: the "
                        "search goes on until the budget ends")
    parser.add_argument("--target", help="as `run --target`, e.g. accuracy=0.95 (default: the goal's; none: the "
                        "budget ends the run)")
    parser.add_argument("--search-seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=None,
                        help="per-candidate limit in seconds (default: `run`'s for this budget)")
    parser.add_argument("--memory", default="32g", help="per worker, as `--memory` (default: 32g)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, help="write search.json, report.html and run.sqlite here")
    args = parser.parse_args(argv)
    # SIGTERM (a timeout, kill) unwinds like Ctrl-C: the run is recorded as interrupted, no worker outlives it
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    from orchestrator import api
    from orchestrator.exceptions import UsageError
    from orchestrator.loop import default_run_timeout
    from orchestrator.registry.files import utc_stamp
    from orchestrator.sandbox.config import SandboxConfig, run_cpus, validate
    from orchestrator.sandbox.local import SubprocessBackend

    facts = _device_facts(args.device)
    timeout = args.timeout or default_run_timeout(args.time_budget)
    cpus = run_cpus(os.cpu_count() or 1, args.parallel)
    try:
        config = validate(SandboxConfig(device=args.device, cpus=cpus, memory=args.memory, timeout_s=timeout))
    except UsageError as exc:
        raise SystemExit(f"device_search: {exc}") from None
    name = f"{NAME_PREFIX}-{args.device.split(':')[0]}-{utc_stamp()}"
    print(f"device_search: {facts['gpu'] or 'CPU'}, torch {facts['torch']}; {args.dataset}, {args.time_budget:.0f} s "
          f"budget, {args.seeds} seed(s), {cpus:g} cpus and {timeout:.0f} s per candidate; the worker is a local "
          "process (UNSAFE: no container, measurement only)", file=sys.stderr, flush=True)
    started = time.monotonic()
    interrupted = False
    try:  # the run's own summary goes to stderr with its progress: stdout is the JSON alone
        with contextlib.redirect_stdout(sys.stderr):
            api.run(args.goal, dataset=args.dataset, data_dir=args.data_dir, target=args.target, name=name,
                    runs_dir=args.runs_dir,
                    max_candidates=args.max_candidates, time_budget_s=args.time_budget, seeds=args.seeds,
                    parallel=args.parallel, search_seed=args.search_seed, sandbox=config,
                    backend_factory=SubprocessBackend)
    except UsageError as exc:  # bad data or flags: nothing was run
        raise SystemExit(f"device_search: {exc}") from None
    except KeyboardInterrupt:
        interrupted = True  # the run is recorded as interrupted: its figures so far still count
    report = summarize(args.runs_dir / name, time.monotonic() - started, facts)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "search.json").write_text(text + "\n")
        from orchestrator.registry.files import RunPaths

        paths = RunPaths(args.runs_dir / name)
        for source, target in ((paths.report_html, "report.html"), (paths.sqlite, "run.sqlite")):
            if source.is_file():
                shutil.copyfile(source, args.out / target)
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
