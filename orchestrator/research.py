"""`researcher run` and `researcher resume`: set a run up, drive the loop, report.

Everything the run needs is built here in order - settings, registry, data,
planner, sandbox pool, live view - and torn down in reverse, so that Ctrl-C
or SIGTERM at any moment leaves a consistent registry, no container, and a
report of what was done; `researcher resume RUN_DIR` continues from there.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from evaluator.datasets import DEFAULT_DATASET
from orchestrator.exceptions import UsageError
from orchestrator.planning.types import PlannerFacts
from orchestrator.planning.types import seeds_from_count
from orchestrator.registry import Registry, RunSettings, new_run_dir
from orchestrator.sandbox.config import SandboxConfig

DEFAULT_GOAL = f"{DEFAULT_DATASET} classifier with at least 98% accuracy"
DEFAULT_RUNS_DIR = "runs"


@dataclass(frozen=True)
class Secrets:
    """What must never be stored: read from flags or the environment at each start."""

    # repr=False: a traceback's locals or a log line must not show them
    llm_api_key: str | None = field(default=None, repr=False)
    llm_base_url: str | None = field(default=None, repr=False)  # whole; the settings hold it redacted


def planner_facts(facts) -> PlannerFacts:
    """The planner's view of the prepared data (never the test labels)."""
    return PlannerFacts.of(facts)


def make_planner(settings: RunSettings, facts: PlannerFacts, registry: Registry, secrets: Secrets):
    """The offline planner, or the LLM planner (with the offline one as its fallback)."""
    from orchestrator.planning.offline import OfflinePlanner

    offline = OfflinePlanner(facts, settings.target, seed=settings.search_seed, device=settings.device)
    llm = settings.llm
    if llm is None:
        return offline
    import warnings

    from orchestrator.llm.client import LLMClient
    from orchestrator.llm.retry import RetryPolicy
    from orchestrator.llm.urls import InsecureCredentialsWarning
    from orchestrator.planning.llm import LLMPlanner

    with warnings.catch_warnings():  # the CLI has said it already, on one line
        warnings.simplefilter("ignore", InsecureCredentialsWarning)
        client = LLMClient(secrets.llm_base_url or llm.base_url, llm.model, secrets.llm_api_key,
                           timeout=llm.timeout_s,
                           retry=RetryPolicy(max_retries=llm.max_retries, base_s=llm.retry_backoff_s),
                           recorder=registry.record_llm_call)
    return LLMPlanner(client, facts, settings.target, settings.goal, mode=llm.mode, fallback=offline)


def sandbox_for_run(base: SandboxConfig, parallel: int, cpus_given: bool) -> SandboxConfig:
    """Share the host's cores between parallel sandboxes unless --cpus was given (see ``run_cpus``)."""
    from orchestrator.sandbox.config import run_cpus

    if cpus_given:
        return base
    return msgspec.structs.replace(base, cpus=run_cpus(os.cpu_count() or 1, parallel))


def check_runs_dir(root: str | Path) -> None:
    """UsageError, before anything is written, when this process cannot make run directories in ``root``.

    A missing runs dir is made with its missing parents, so the nearest existing one decides.
    Under compose the orchestrator is not root, and Docker makes a missing ./runs root's.
    """
    path = Path(root).absolute()
    probe = path
    try:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK):
            return
    except OSError:  # a parent this uid cannot search
        pass
    raise UsageError(f"cannot write the runs dir {path} as uid {os.geteuid()}: under compose set RESEARCHER_UID "
                     "and RESEARCHER_GID to its owner (`id -u`, `id -g`, e.g. in .env), or chown it")


def start_run(settings: RunSettings, *, root: Path, config: SandboxConfig, secrets: Secrets, backend_factory,
              cluster: str | None = None) -> int:
    """Create a run directory and registry, then drive the loop (on the Ray cluster at ``cluster``, if given)."""
    from orchestrator.evaluation import load_prepared

    check_runs_dir(root)
    # Bad data is a usage error before anything is written, not a failed run directory.
    prepared = load_prepared(settings.dataset, settings.data_dir, seed=settings.search_seed)
    run_dir = new_run_dir(root, settings.name or None)
    registry = Registry.create(run_dir, settings)
    return drive(registry, config=config, secrets=secrets, backend_factory=backend_factory, resumed=False,
                 prepared=prepared, cluster=cluster)


def resume_run(run_dir: Path, *, config: SandboxConfig | None, secrets: Secrets, backend_factory,
               cluster: str | None = None) -> int:
    """Reopen a run (interrupted candidates are marked and redone) and continue it."""
    registry = Registry.open(run_dir)  # logs the resume and marks interrupted candidates
    registry.set_status("running", "resumed")
    return drive(registry, config=config, secrets=secrets, backend_factory=backend_factory, resumed=True,
                 cluster=cluster)


def sandbox_pool(settings: RunSettings, config: SandboxConfig, data_dir: Path, *, backend, cluster: str | None,
                 registry: Registry, view):
    """The run's slots: a local warm pool over ``backend``, or a ``ClusterPool`` on the Ray cluster ``cluster``."""
    from orchestrator.sandbox.pool import WarmPool

    if not cluster:
        return WarmPool(backend, config, size=settings.parallel, data_dir=data_dir)
    from orchestrator.cluster.pool import ClusterPool

    def on_event(kind: str, message: str, **payload) -> None:
        registry.log_event(kind, message, **payload)
        view.message(message)

    return ClusterPool(cluster, config, data_dir=data_dir, on_event=on_event)


def drive(registry: Registry, *, config: SandboxConfig, secrets: Secrets, backend_factory, resumed: bool,
          prepared=None, cluster: str | None = None) -> int:
    """Prepare, run the loop, write the reports; returns the process exit code."""
    from orchestrator.live import LiveView
    from orchestrator.loop import ResearchLoop
    from orchestrator.evaluation import load_prepared

    settings = registry.settings
    paths = registry.paths
    started = time.monotonic()
    scratch = paths.root / "scratch"
    status, message = "failed", "stopped by an error"
    try:
        with LiveView() as view:
            view.message(f"run {paths.root} ({'resumed' if resumed else 'new'}): {settings.goal}")
            if prepared is None:
                view.message(f"loading dataset {settings.dataset!r} on the trusted side")
                prepared = load_prepared(settings.dataset, settings.data_dir, seed=settings.search_seed)
            facts = prepared.facts()
            registry.set_dataset(facts)
            view.message(f"dataset {facts.name}: {facts.n_train} train / {facts.n_val} val / "
                         f"{facts.n_select} selection / {facts.n_test} test, "
                         f"input {tuple(facts.input_shape)}, {facts.num_classes} classes, hash {facts.content_hash[:12]}")
            spec = prepared.write_sandbox_dir(scratch / "data")
            planner = make_planner(settings, planner_facts(facts), registry, secrets)
            backend = None if cluster else backend_factory()  # a cluster's nodes each have their own
            try:
                with sandbox_pool(settings, config, scratch / "data", backend=backend, cluster=cluster,
                                  registry=registry, view=view) as pool:
                    if cluster:
                        view.message(f"Ray cluster {cluster}: {pool.capacity()} slot(s) on "
                                     f"{len(pool.nodes())} node(s) so far; {settings.parallel} candidate(s) at once "
                                     "(--parallel)")
                    loop = ResearchLoop(registry, planner, pool, prepared, config, parallel=settings.parallel, view=view)
                    loop.data_spec = spec
                    reason = loop.run()
            finally:
                if backend is not None:
                    backend.close()
                close = getattr(planner, "close", None)
                if close is not None:
                    close()  # the LLM client's connections
        status, message = "finished", reason
    except KeyboardInterrupt:
        status, message = "interrupted", "interrupted by the user"
        raise
    except Exception as exc:
        message = f"stopped by an error: {type(exc).__name__}: {str(exc)[:300]}"
        raise
    finally:
        _finish(registry, status, message, scratch, keep=settings.keep)
        html = _reports(paths.root)
        _print_summary(paths, status, message, time.monotonic() - started, html)
    return 0


def _reports(run_dir: Path) -> Path:
    """Write the reports; a failure to is said, never raised (the registry holds everything)."""
    from orchestrator.report import write_reports

    try:
        return write_reports(run_dir)[1]
    except Exception as exc:  # noqa: BLE001
        sys.stderr.write(f"warning: the report could not be written ({type(exc).__name__}: {str(exc)[:300]}); "
                         f"everything is in the registry: retry with `researcher report {run_dir}`\n")
        return run_dir / "report.html"


def _finish(registry: Registry, status: str, message: str, scratch: Path, *, keep: bool) -> None:
    registry.set_status(status, message)
    registry.close()
    if not keep:
        shutil.rmtree(scratch, ignore_errors=True)


def _print_summary(paths, status: str, message: str, wall: float, html: Path) -> None:
    """The best candidate with its CI, throughput, and where everything is (each line made inert)."""
    from orchestrator.safetext import inert

    with Registry.open(paths.root, readonly=True) as registry:
        metric = registry.settings.target.metric
        records = registry.candidates()
        best = registry.best()
    finished = [r for r in records if r.status in ("passed", "failed")]
    # ``message`` may carry an exception's or the planner's text: untrusted, one line.
    noun = "candidate" if len(finished) == 1 else "candidates"
    lines = ["", f"run {status}: {message}",
             f"  {len(finished)} {noun} ({sum(r.pruned for r in finished)} pruned, "
             f"{sum(r.status == 'failed' for r in finished)} failed) in {wall:.0f} s, "
             f"{60 * len(finished) / max(wall, 1e-9):.1f} candidates/min"]
    if best is not None:
        summary = best.summary(metric)
        ci = f", 95% CI [{summary.ci95_low:.4f}, {summary.ci95_high:.4f}] over {len(summary.per_seed)} seeds" \
            if summary.ci95_low is not None else " (one seed: no CI)"
        lines.append(f"  best: {best.label} test {metric} {summary.mean:.4f}{ci}, {best.params or 0:,} params")
        chosen = best.value(metric)
        lines.append(f"  chosen on selection {metric} {chosen:.4f} (a held-out split; the test split decided nothing)"
                     if chosen is not None else "  chosen on the selection split")
        lines.append(f"  best model source: {paths.best_model}")
    else:
        lines.append("  no candidate passed; see the report for the failures")
    lines += [f"  report: {html}", f"  registry: {paths.sqlite}"]
    if status == "interrupted":
        lines.append(f"  continue with: researcher resume {paths.root}")
    sys.stdout.write("".join(inert(line) + "\n" for line in lines))


def default_goal_for(dataset: str) -> str:
    """The goal of a run given no ``--goal``, naming the dataset it trains on (the LLM and the report read it).

    The built-in default keeps its target (98% on digits); ``--dataset NAME`` alone sets none, since
    no one fixed target suits every dataset (98% is out of reach on CIFAR-10 or Fashion-MNIST): the
    run spends its budget and reports the best it found.
    """
    if dataset == DEFAULT_DATASET:
        return DEFAULT_GOAL
    return f"{dataset} classifier with the best accuracy within the budget"


def run_goal(args, dataset) -> str:
    """The goal a run records: ``--goal``, or the default one for the ``DatasetChoice``."""
    return default_goal_for(dataset.name) if args.goal == DEFAULT_GOAL else args.goal


def run_target(target_flag: str | None, args, dataset):
    """The run's stop rule: ``--target`` when given, else the target its goal states (``Target()``: none)."""
    from orchestrator.planning.goal import parse_goal, parse_target_flag
    from orchestrator.planning.types import Target

    return parse_target_flag(target_flag) if target_flag else (parse_goal(run_goal(args, dataset)) or Target())


def dataset_choice(args):
    """The run's ``DatasetChoice`` from ``--goal`` and ``--dataset``; UsageError when they disagree.

    The default goal is not the user's words: it names no dataset, so ``--dataset iris``
    alone is no disagreement (and without a flag it still means digits).
    """
    from orchestrator.planning.goal import choose_dataset

    return choose_dataset("" if args.goal == DEFAULT_GOAL else args.goal, args.dataset)


def settings_from_args(args, goal_target, dataset=None) -> RunSettings:
    """RunSettings from `researcher run` flags (validated, all problems at once).

    ``dataset`` is the ``DatasetChoice`` already made from the goal and ``--dataset``;
    without it the choice is made here (``dataset_choice``).
    """
    problems = []
    if dataset is None:
        try:
            dataset = dataset_choice(args)
        except UsageError as exc:
            problems.append(str(exc))
    if args.max_candidates is not None and args.max_candidates < 1:
        problems.append("--max-candidates must be >= 1")
    if args.time_budget is not None and args.time_budget <= 0:
        problems.append("--time-budget must be > 0 seconds")
    try:
        seeds = seeds_from_count(args.seeds)
    except UsageError as exc:
        problems.append(str(exc))
    if args.parallel < 1:
        problems.append("--parallel must be >= 1")
    if args.llm_max_retries < 0:
        problems.append("--llm-max-retries must be >= 0")
    if not args.llm_retry_backoff >= 0:
        problems.append("--llm-retry-backoff must be >= 0 seconds")
    if args.llm_model and not args.llm_base_url:
        problems.append("--llm-model needs --llm-base-url (an OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1)")
    from orchestrator.llm.client import chat_url
    from orchestrator.llm.urls import redact_url
    from orchestrator.registry.settings import LLMConfig

    if args.llm_base_url:
        try:  # a bad URL is a usage error before a run directory exists (the message is redacted)
            chat_url(args.llm_base_url)
        except UsageError as exc:
            problems.append(f"--llm-base-url: {exc}")
    if problems:
        raise UsageError("; ".join(problems))

    llm = None
    if args.llm_base_url:
        llm = LLMConfig(base_url=redact_url(args.llm_base_url),  # Secrets has it whole
                          model=args.llm_model or "default", mode=args.llm_mode, timeout_s=args.llm_timeout,
                          max_retries=args.llm_max_retries, retry_backoff_s=args.llm_retry_backoff)
    return RunSettings(
        goal=run_goal(args, dataset),
        name=args.name or "", dataset=dataset.name, dataset_from=dataset.origin, data_dir=args.data_dir,
        target=goal_target, seeds=seeds, max_candidates=args.max_candidates, time_budget_s=args.time_budget,
        search_seed=args.search_seed, llm=llm, parallel=args.parallel, keep=args.keep,
        # the run's whole SandboxConfig replaces this one once it is built (``with_sandbox``)
        sandbox=SandboxConfig(device=args.device, container_runtime=args.runtime),
    )


def with_sandbox(settings: RunSettings, config: SandboxConfig) -> RunSettings:
    """``settings`` holding the run's sandbox config (stored less the host-local jobs dir)."""
    return msgspec.structs.replace(settings, sandbox=config)
