"""The `researcher` command line.

Exit codes: 0 success (the model passed), 1 the model failed (a recorded
failure), 2 bad usage or an unreadable file, 3 no sandbox available (no
engine, no image, stale image, no GPU runtime), 130 interrupted.

Every option ``--foo-bar`` of every subcommand takes its default from the
environment variable ``RESEARCHER_FOO_BAR`` when the flag is not given (an
empty value counts as unset); the value is checked like the flag's, and a
flag without a value accepts 1/true/yes/on and 0/false/no/off.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from orchestrator.exceptions import DataError, ResearcherError, SandboxUnavailable, UsageError
from orchestrator.image import add_image_parser
from orchestrator.launcher.cli import add_launcher_parser
from orchestrator.safetext import inert
from orchestrator.sandbox.config import DEFAULT_IMAGE, DEFAULT_SPARE, DEVICES, RUNTIMES, SandboxConfig, validate
from sandbox_image.protocol import OPTIMIZERS

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_SANDBOX, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


ENV_PREFIX = "RESEARCHER_"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with our usage message and fills unset options from the environment."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        for key, value in vars(namespace).items():
            if isinstance(value, _FromEnv):  # the flag was not given
                setattr(namespace, key, value.resolve(self, os.environ))
        return namespace, extras


class _FromEnv:
    """An option's default while parsing: its environment variable's value, else its own default."""

    def __init__(self, action: argparse.Action, var: str) -> None:
        self.action, self.var, self.default = action, var, action.default

    def __repr__(self) -> str:  # shown by %(default)s in help
        return repr(self.default)

    def resolve(self, parser: argparse.ArgumentParser, environ) -> object:
        """The value for an option not given on the command line (usage error if the variable is bad)."""
        raw = environ.get(self.var, "")
        if not raw.strip():
            # As argparse treats a default: a string goes through the option's type.
            return parser._get_value(self.action, self.default) if isinstance(self.default, str) else self.default
        if self.action.nargs == 0:  # store_true / store_false / store_const
            word = raw.strip().lower()
            if word in _TRUE:
                return self.action.const
            if word in _FALSE:
                return self.default
            parser.error(f"environment variable {self.var}={raw!r} is not a boolean: "
                         f"use one of {', '.join(_TRUE)} or {', '.join(_FALSE)}")
        try:  # argparse's own conversion and choices check, so the variable means what the flag means
            value = parser._get_value(self.action, raw)
            parser._check_value(self.action, value)
        except argparse.ArgumentError as exc:
            parser.error(f"environment variable {self.var}: {exc.message}")
        return value


def env_var(action: argparse.Action) -> str | None:
    """``RESEARCHER_FOO_BAR`` for an option ``--foo-bar`` that takes a default; None otherwise."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    if not longs or not isinstance(action, (argparse._StoreAction, argparse._StoreConstAction)):
        return None
    if action.nargs not in (None, 0, "?"):
        return None  # lists have no one-string form
    return ENV_PREFIX + longs[0][2:].replace("-", "_").upper()


def add_env_defaults(parser: argparse.ArgumentParser) -> None:
    """Let every option of ``parser`` and its subcommands default to its RESEARCHER_* variable."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                add_env_defaults(sub)
            continue
        var = env_var(action)
        if var is None or isinstance(action.default, _FromEnv):
            continue
        action.default = _FromEnv(action, var)
        if action.help is not argparse.SUPPRESS:
            action.help = f"{action.help or ''} [env {var}]".strip()


def add_sandbox_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that set the sandbox's limits (shared by check, run and bench)."""
    group = parser.add_argument_group("sandbox")
    group.add_argument("--timeout", type=float, default=None, metavar="S",
                       help="wall-clock limit of one job in seconds, enforced by killing the container (default: 120 for check, 600 for check --train; 900 for run, more where --time-budget is over 30 min: "
                            "enough for the final training's 40%%, padded as estimates are)")
    group.add_argument("--memory", default="2g", help="memory cap of the container, swap included (default: 2g)")
    group.add_argument("--cpus", type=float, default=None,
                       help="CPU cap of each container; torch threads follow it (default: run shares the cores between --parallel sandboxes, less a quarter kept for the orchestrator and warm-pool start-ups on hosts of 4+ cores; check uses all cores)")
    group.add_argument("--pids", type=int, default=256, help="process/thread cap of the container (default: 256)")
    group.add_argument("--runtime", choices=RUNTIMES, default="runc", help="container runtime: runc or runsc (gVisor) (default: runc)")
    group.add_argument("--device", choices=DEVICES, default="cpu", help="train on cpu or cuda (one GPU per sandbox) (default: cpu)")
    group.add_argument("--gpus", metavar="IDS",
                       help="GPUs for --device cuda, e.g. 0,1 or GPU-<uuid>: sandboxes are spread over them, one GPU "
                            "each; an id listed twice is shared (default: every GPU nvidia-smi lists)")
    group.add_argument("--image", default=DEFAULT_IMAGE, help=f"sandbox image (default: {DEFAULT_IMAGE})")
    add_jobs_dir_flag(group)
    add_launcher_flag(group)


def add_jobs_dir_flag(parser) -> None:
    """``--jobs-dir``: where the per-job socket directories are made."""
    parser.add_argument("--jobs-dir", metavar="DIR",
                        help="host directory for the per-job socket directories; in a container it must be at "
                             "the same path as on the Docker host; it must be private to this user (default: "
                             "researcher-jobs-<uid> in the system temp dir, made 0700)")


def add_download_flags(parser, *, switch: bool = True) -> None:
    """``--download`` (when ``switch``) and ``--data-mirror``/``--mirror``: fetching data on this host."""
    if switch:
        parser.add_argument("--download", action="store_true",
                            help="fetch a missing CIFAR-10/100, MNIST or Fashion-MNIST on this host (md5-checked) "
                                 "into --data-dir, or the cache when none is given; never inside a sandbox")
    parser.add_argument("--data-mirror", "--mirror", dest="data_mirror", metavar="URL",
                        help="download from this server instead of torchvision's URLs: it serves "
                             "URL/<dataset>/<torchvision's file name>, e.g. URL/cifar10/cifar-10-python.tar.gz")


def locate_data(name: str, data_dir: str | None, args: argparse.Namespace, *, from_goal: bool = False) -> str | None:
    """The data dir to load ``name`` from (the cache when none is given); downloads with --download."""
    from evaluator.download import ensure
    from orchestrator.planning.goal import DATASET_TITLES

    try:
        return ensure(name, data_dir, download=bool(getattr(args, "download", False)), mirror=args.data_mirror,
                      progress=_say)
    except DataError as exc:
        if not from_goal:
            raise
        title = DATASET_TITLES.get(name, name)
        raise DataError(f"the goal names {title} ({name}), which is not available here: {exc}") from exc


def _say(line: str) -> None:
    print(f"researcher: {inert(line)}", file=sys.stderr, flush=True)


def sandbox_config(args: argparse.Namespace, *, default_timeout: float) -> SandboxConfig:
    """A validated SandboxConfig from the sandbox flags."""
    cores = float(os.cpu_count() or 1)
    gpus = _gpu_ids(args)
    return validate(SandboxConfig(
        image=args.image, memory=args.memory, cpus=args.cpus if args.cpus is not None else cores, pids=args.pids,
        container_runtime=args.runtime, device=args.device, gpus=gpus, gpu=gpus[0] if args.gpus else None,
        timeout_s=args.timeout if args.timeout is not None else default_timeout, jobs_dir=_abspath(args.jobs_dir),
    ))


def _gpu_ids(args: argparse.Namespace) -> tuple[str, ...]:
    """--gpus, else every GPU nvidia-smi lists when --device cuda (empty: Docker picks one)."""
    from orchestrator.sandbox.gpus import host_gpus, parse_gpu_ids

    if args.gpus:
        return parse_gpu_ids(args.gpus)
    if args.device != "cuda":
        return ()
    if getattr(args, "launcher", None):  # this process may see no GPU: the launcher's host does
        from orchestrator.launcher.client import hello

        return tuple(index for index, _ in hello(args.launcher).gpus)
    return tuple(index for index, _ in host_gpus())


def _abspath(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """``-v``/``--verbose``: a line per epoch and debug logging."""
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print a line per epoch of every candidate and debug logging (default: off)")


def add_launcher_flag(parser: argparse.ArgumentParser) -> None:
    """``--launcher ipc://PATH``: sandboxes through a running `researcher launcher` instead of Docker."""
    parser.add_argument("--launcher", default=None, metavar="ipc://PATH",
                        help="start sandboxes through the launcher listening there (compose; docs/deployment.md) "
                             "instead of the Docker engine")


def add_cluster_flag(parser: argparse.ArgumentParser) -> None:
    """``--cluster ray://HOST:PORT``: candidates on the nodes of a Ray cluster (the [ray] extra)."""
    parser.add_argument("--cluster", default=os.environ.get("RAY_ADDRESS") or None, metavar="ray://HOST:PORT",
                        help="run candidates on the nodes of this Ray cluster, each in a hardened container on its "
                             "node's own Docker (`pip install -e '.[ray]'` on every node; docs/deployment.md); "
                             "--parallel then counts slots across the cluster (default: $RAY_ADDRESS, else this "
                             "machine alone)")


def check_cluster_args(args) -> None:
    """UsageError for flags that cannot go with ``--cluster``."""
    if getattr(args, "cluster", None) and getattr(args, "launcher", None):
        raise UsageError("--cluster and --launcher cannot go together: on a cluster each node's sandbox host "
                         "drives its own Docker engine; drop one of them")


def backend_factory(image: str, launcher: str | None):
    """Sandboxes from the launcher at ``launcher``, else straight from Docker."""
    if not launcher:
        return docker_backend_factory(image)

    def make():
        from orchestrator.launcher.client import LauncherBackend

        return LauncherBackend(launcher, image=None if image == DEFAULT_IMAGE else image)

    return make


def docker_backend_factory(image: str):
    """A factory of Docker backends that connects lazily and checks ``image`` first."""
    def make():
        from orchestrator.sandbox.image import check_image
        from orchestrator.sandbox.docker import DockerBackend, connect

        client = connect()
        check_image(client, image)
        return DockerBackend(client)

    return make


# ----------------------------------------------------------------------- check


def add_check_parser(sub) -> None:
    """`researcher check MODEL.py ...`."""
    p = sub.add_parser("check", help="evaluate one model file in a hardened sandbox",
                       description="Import, shape-check and optionally train one model file inside a "
                                   "hardened, network-less container. Nothing from the file runs on the host.")
    p.add_argument("model", type=Path, help="Python file defining an nn.Module class")
    p.add_argument("--class-name", default="Net", help="name of the nn.Module class in the file (default: Net)")
    p.add_argument("--input-shape", help="input shape without the batch dimension, e.g. 1,8,8 (implied by --dataset)")
    p.add_argument("--num-classes", type=int, help="number of output classes (implied by --dataset)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    t = p.add_argument_group("training (with --train)")
    t.add_argument("--train", action="store_true", help="train on --dataset and score on its held-out test split")
    t.add_argument("--dataset", help="built-in dataset (digits, breast_cancer, wine, iris, fashion_mnist) or a --data-dir format")
    t.add_argument("--data-dir", help="directory with your data (CIFAR-10/100, MNIST, FashionMNIST, ImageFolder, CSV, NPZ)")
    add_download_flags(t)
    t.add_argument("--epochs", type=int, default=10, help="epochs per seed (default: 10)")
    t.add_argument("--seeds", type=int, default=1, help="number of seeds (training runs) to aggregate (default: 1)")
    t.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="optimiser (default: adamw)")
    t.add_argument("--out", type=Path, help="write the JSON result and the plots (PNG) into this directory")
    add_sandbox_flags(p)
    add_verbose_flag(p)
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    """Run `researcher check`."""
    from orchestrator.check import DATA_DIR_NEEDS_DATASET, CheckRequest, parse_shape, print_outcome, run_check
    from sandbox_image.protocol import TrainSpec

    from orchestrator.planning.types import seeds_from_count

    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise UsageError("--epochs and --batch-size must be >= 1 and --lr > 0")
    seeds = seeds_from_count(args.seeds)
    if args.data_dir and not args.dataset:
        raise UsageError(DATA_DIR_NEEDS_DATASET)
    if (args.train or args.out) and not args.dataset:
        raise UsageError("--train needs --dataset NAME (e.g. --dataset digits)")
    if args.download and not args.dataset:
        raise UsageError("--download needs --dataset NAME (e.g. --dataset cifar10)")
    train = None
    if args.train:
        train = TrainSpec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          optimizer=args.optimizer, seeds=seeds)
    request = CheckRequest(
        path=args.model, class_name=args.class_name,
        input_shape=parse_shape(args.input_shape) if args.input_shape else None,
        num_classes=args.num_classes, train=train, dataset=args.dataset, data_dir=args.data_dir, out=args.out,
    )
    if request.num_classes is not None and request.num_classes < 1:
        raise UsageError("--num-classes must be >= 1")
    config = sandbox_config(args, default_timeout=600.0 if args.train else 120.0)
    if args.dataset:  # on this host, before any sandbox: the cache, or a download with --download
        import dataclasses

        request = dataclasses.replace(request, data_dir=locate_data(args.dataset, args.data_dir, args))
    outcome = run_check(request, backend_factory(config.image, args.launcher), config)
    print_outcome(outcome, as_json=args.json)
    return outcome.exit_code


# ----------------------------------------------------------------------- run / resume


def add_run_parser(sub) -> None:
    """`researcher run --goal TEXT ...`."""
    from orchestrator.research import DEFAULT_GOAL, DEFAULT_RUNS_DIR

    p = sub.add_parser("run", help="research toward a goal: propose, sandbox, score, repeat",
                       description="Propose model designs toward a goal, evaluate each in a fresh hardened sandbox, "
                                   "score on the trusted side, and stop at the target or the budget. Without "
                                   "--llm-base-url the built-in offline planner (Optuna TPE) searches.")
    goal_help = (f"what to build, e.g. 'F1 above 0.9' (default: {DEFAULT_GOAL!r}; with --dataset NAME alone, "
                 "'NAME classifier with the best accuracy within the budget', no target)"
                 ).replace("%", "%%")  # argparse %-formats help
    p.add_argument("--goal", default=DEFAULT_GOAL, help=goal_help)
    p.add_argument("--target", help="stop when the best mean selection METRIC (a held-out split; test never decides) "
                                    "reaches VALUE, e.g. accuracy=0.98 (overrides the goal's)")
    p.add_argument("--name", help="run directory name (default: run_<UTC timestamp>)")
    p.add_argument("--runs-dir", type=Path, default=Path(DEFAULT_RUNS_DIR), help=f"where run directories go (default: ./{DEFAULT_RUNS_DIR})")
    p.add_argument("--keep", action="store_true", help="keep the run's scratch files (the arrays given to sandboxes)")
    p.add_argument("--dataset", default=None,
                   help="built-in dataset or --data-dir format (default: the dataset the goal names, else digits)")
    p.add_argument("--data-dir", help="directory with your data (CIFAR-10/100, MNIST, FashionMNIST, ImageFolder, CSV, "
                                      "NPZ); without it, downloaded datasets are looked for in the cache")
    add_download_flags(p)
    p.add_argument("--max-candidates", type=int, default=10, help="candidate budget (default: 10)")
    p.add_argument("--time-budget", type=float, default=1800.0, help="wall-clock budget in seconds; no candidate starts after it (default: 1800)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per candidate, for mean and 95%% CI (default: 3)")
    p.add_argument("--parallel", type=int, default=1, help="candidates evaluated at once (default: 1)")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the planner's search and of the data split (default: 0)")
    llm = p.add_argument_group("LLM planner (any OpenAI-compatible /v1/chat/completions)")
    llm.add_argument("--llm-base-url", help="e.g. http://127.0.0.1:11434/v1 (Ollama), http://host:8000/v1 (vLLM), https://api.openai.com/v1")
    llm.add_argument("--llm-model", help="model name the server knows")
    llm.add_argument("--llm-api-key", help="API key (default: $OPENAI_API_KEY or $LLM_API_KEY; never stored)")
    llm.add_argument("--llm-mode", choices=("config", "source"), default="config",
                     help="config: the LLM picks a layer config the assembler renders; source: it writes the nn.Module itself")
    llm.add_argument("--llm-timeout", type=float, default=120.0, help="seconds per LLM request (default: 120)")
    llm.add_argument("--llm-max-retries", type=int, default=4,
                     help="retries of an LLM request after a 429, a 5xx, a refused connection or a timeout (default: 4)")
    llm.add_argument("--llm-retry-backoff", type=float, default=0.5, metavar="S",
                     help="seconds before the first retry, doubled for each next one, with jitter; a server's "
                          "Retry-After wins (default: 0.5)")
    add_sandbox_flags(p)
    add_cluster_flag(p)
    add_verbose_flag(p)
    p.set_defaults(func=cmd_run)


def _api_key(args) -> str | None:
    return getattr(args, "llm_api_key", None) or os.environ.get("OPENAI_API_KEY") or os.environ.get("LLM_API_KEY")


def _secrets(args, stored_url: str | None):
    """Secrets from the flags and environment (the LLM URL whole: the settings store it redacted).

    ``stored_url`` is the run's LLM endpoint (None for the offline planner); a warning is
    printed when the key or a password would go to it over plain http.
    """
    from orchestrator.llm.urls import plain_http_warning
    from orchestrator.research import Secrets

    secrets = Secrets(_api_key(args), llm_base_url=args.llm_base_url or None)
    if stored_url:
        warning = plain_http_warning(secrets.llm_base_url or stored_url, secrets.llm_api_key)
        if warning:
            print(f"researcher: warning: {warning}", file=sys.stderr)
    return secrets


def cmd_run(args: argparse.Namespace) -> int:
    """Run `researcher run`."""
    import msgspec

    from orchestrator.research import (check_runs_dir, dataset_choice, run_target, sandbox_for_run,
                                       settings_from_args, start_run, with_sandbox)
    from orchestrator.sandbox.gpus import bound_parallel

    check_runs_dir(args.runs_dir)  # before any download, launcher or data: nothing is written yet
    check_cluster_args(args)
    choice = dataset_choice(args)
    settings = settings_from_args(args, run_target(args.target, args, choice), dataset=choice)
    from orchestrator.loop import default_run_timeout

    config = sandbox_config(args, default_timeout=default_run_timeout(settings.time_budget_s))
    if args.cluster:  # slots are the nodes' (their CPUs over --cpus, or their GPUs), not this machine's
        if args.cpus is None:
            config = msgspec.structs.replace(config, cpus=1.0)
    else:
        parallel, note = bound_parallel(settings.parallel, device=config.device, cores=os.cpu_count() or 1,
                                        gpus=config.gpus, cpus=args.cpus)
        if note:
            print(f"researcher: note: {note}", file=sys.stderr)
            settings = msgspec.structs.replace(settings, parallel=parallel)
        config = sandbox_for_run(config, settings.parallel, cpus_given=args.cpus is not None)
    settings = with_sandbox(settings, config)
    data_dir = locate_data(settings.dataset, settings.data_dir, args, from_goal=choice.origin == "goal")
    if choice.note:
        print(f"researcher: note: {inert(choice.note)}", file=sys.stderr)
    settings = msgspec.structs.replace(settings, data_dir=data_dir)  # stored: resume finds the same files
    return start_run(settings, root=args.runs_dir, config=config, secrets=_secrets(args, args.llm_base_url),
                     backend_factory=backend_factory(config.image, args.launcher), cluster=args.cluster)


def add_resume_parser(sub) -> None:
    """`researcher resume RUN_DIR`."""
    p = sub.add_parser("resume", help="continue an interrupted run where it stopped")
    p.add_argument("run_dir", type=Path, help="a run directory made by `researcher run`")
    p.add_argument("--llm-api-key", help="API key for an LLM run (default: $OPENAI_API_KEY or $LLM_API_KEY)")
    p.add_argument("--llm-base-url", help="the LLM endpoint with its credentials (user:pass@, ?key=), which the run "
                                          "stored without them (default: the stored URL)")
    add_jobs_dir_flag(p)
    add_launcher_flag(p)
    add_cluster_flag(p)
    add_verbose_flag(p)
    p.set_defaults(func=cmd_resume)


def cmd_resume(args: argparse.Namespace) -> int:
    """Run `researcher resume`."""
    check_cluster_args(args)
    from orchestrator.registry import Registry
    from orchestrator.research import resume_run

    with Registry.open(args.run_dir, readonly=True) as registry:
        settings = registry.settings
    import msgspec

    # the stored config, with this host's jobs dir (a host-local path is never stored)
    config = validate(msgspec.structs.replace(settings.sandbox, jobs_dir=_abspath(args.jobs_dir)))
    llm_url = settings.llm.base_url if settings.llm else None
    return resume_run(args.run_dir, config=config, secrets=_secrets(args, llm_url),
                      backend_factory=backend_factory(config.image, args.launcher), cluster=args.cluster)


def add_report_parser(sub) -> None:
    """`researcher report RUN_DIR` and `researcher ls`."""
    p = sub.add_parser("report", help="(re)generate report.md and report.html of a run")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("ls", help="list runs with their status and best result")
    p.add_argument("runs_dir", type=Path, nargs="?", default=Path("runs"), help="folder holding run directories (default: ./runs)")
    p.set_defaults(func=cmd_ls)


def cmd_report(args: argparse.Namespace) -> int:
    """Run `researcher report`."""
    from orchestrator.report import write_reports

    md, html = write_reports(args.run_dir)
    print(f"wrote {md}\nwrote {html}")
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    """Run `researcher ls`."""
    import datetime as dt

    from orchestrator.planning.types import candidate_label
    from orchestrator.registry import list_runs

    try:
        runs = list_runs(args.runs_dir)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    if not runs:
        print(f"no runs under {args.runs_dir}")
        return EXIT_OK
    print(f"{'run':<28} {'status':<12} {'started (UTC)':<17} {'dataset':<14} {'cand':>4} {'fail':>4}  "
          "best (chosen on selection; its test score)")
    for r in runs:
        started = dt.datetime.fromtimestamp(r.started, dt.timezone.utc).strftime("%Y-%m-%d %H:%M") if r.started else "?"
        best = f"{candidate_label(r.best_id, r.best_final_of)} test {r.metric} {r.best_mean:.4f}" if r.best_mean is not None else "-"
        print(inert(f"{r.name:<28} {r.status:<12} {started:<17} {r.dataset:<14} {r.candidates:>4} {r.failed:>4}  {best}"))
    return EXIT_OK


# ----------------------------------------------------------------------- bench


def add_bench_parser(sub) -> None:
    """`researcher bench`."""
    p = sub.add_parser("bench", help="measure what isolation costs: direct vs cold sandbox vs warm pool",
                       description="Train the same fixed set of small digits candidates directly in this process, "
                                   "in one cold container per job, and through the warm pool; print wall times, "
                                   "overhead_ratio (warm / direct), hand-off latency, candidates per minute and "
                                   "peak memory per container.")
    p.add_argument("--candidates", type=int, default=12, help="size of the fixed set (default: 12)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per candidate (default: 3)")
    p.add_argument("--parallel", type=int, default=2, help="also run the warm pool with this many at once (default: 2)")
    p.add_argument("--spare", type=int, default=DEFAULT_SPARE,
                   help=f"warm-pool slots kept starting beyond --parallel, as `run` does (default: {DEFAULT_SPARE})")
    p.add_argument("--memory", default="2g", help="memory cap per container (default: 2g)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"sandbox image (default: {DEFAULT_IMAGE})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cluster", default=None, metavar="ray://HOST:PORT",
                   help="instead: the dispatch overhead of --cluster, the same set through the local warm pool "
                        "and then through this Ray cluster, --parallel at once (use --epochs 30 or more: "
                        "candidates that train for a few seconds)")
    add_jobs_dir_flag(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run `researcher bench`."""
    from orchestrator.bench import bench, bench_cluster, print_report

    if args.candidates < 1 or args.epochs < 1 or args.parallel < 1 or args.spare < 0:
        raise UsageError("--candidates, --epochs and --parallel must be >= 1 and --spare >= 0")
    if args.cluster:
        report = bench_cluster(address=args.cluster, count=args.candidates, epochs=args.epochs, parallel=args.parallel,
                               spare=args.spare, backend_factory=docker_backend_factory(args.image), image=args.image,
                               memory=args.memory, progress=lambda line: print(line, file=sys.stderr, flush=True),
                               jobs_dir=_abspath(args.jobs_dir))
        print_report(report, as_json=args.json)
        return EXIT_OK
    report = bench(count=args.candidates, epochs=args.epochs, parallel=args.parallel, spare=args.spare,
                   backend_factory=docker_backend_factory(args.image), image=args.image, memory=args.memory,
                   progress=lambda line: print(line, file=sys.stderr, flush=True), jobs_dir=_abspath(args.jobs_dir))
    print_report(report, as_json=args.json)
    return EXIT_OK


# ----------------------------------------------------------------------- data


def add_data_parser(sub) -> None:
    """`researcher data get NAME` (the names written out: evaluator.datasets imports numpy)."""
    p = sub.add_parser("data", help="fetch torchvision's datasets onto this host (checksums verified)")
    commands = p.add_subparsers(dest="data_command", required=True, metavar="{get}", parser_class=_Parser)
    get = commands.add_parser("get", help="download a dataset into --data-dir or the cache",
                              description="Download one of torchvision's datasets on this (trusted) host, check "
                                          "every file against torchvision's md5 and unpack it in torchvision's "
                                          "layout. Nothing half-written is left when a download fails.")
    get.add_argument("name", metavar="NAME", help="dataset to fetch: cifar10, cifar100, mnist, fashion_mnist")
    get.add_argument("--data-dir", help="put it here (default: $XDG_CACHE_HOME/pytorch-researcher/data, "
                                        "~/.cache/pytorch-researcher/data when unset)")
    add_download_flags(get, switch=False)
    get.set_defaults(func=cmd_data_get)


def cmd_data_get(args: argparse.Namespace) -> int:
    """Run `researcher data get`: print where the data went and how to use it."""
    from evaluator.datasets import DOWNLOADABLE, canonical_name
    from evaluator.download import cache_dir, fetch

    name = canonical_name(args.name)
    if name not in DOWNLOADABLE:
        raise UsageError(f"{args.name!r} cannot be downloaded; `researcher data get` fetches {', '.join(DOWNLOADABLE)}")
    root = fetch(name, args.data_dir, mirror=args.data_mirror, progress=_say)
    print(inert(f"{name} is in {root}"))
    if args.data_dir is None and root == cache_dir():
        print(inert(f"use it with: researcher run --dataset {name} (the cache is searched when --data-dir is not given)"))
    else:
        print(inert(f"use it with: researcher run --dataset {name} --data-dir {root}"))
    return EXIT_OK


# ----------------------------------------------------------------------- doctor


def add_doctor_parser(sub) -> None:
    """`researcher doctor`."""
    p = sub.add_parser("doctor", help="what this host offers and what is missing, each with its fix")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"sandbox image to check (default: {DEFAULT_IMAGE})")
    p.add_argument("--data-dir", help="also look for datasets in this directory")
    add_launcher_flag(p)
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run `researcher doctor`: exit 0 when ready, 3 when something required is missing."""
    from orchestrator.doctor import diagnose, print_table

    return print_table(diagnose(image=args.image, data_dir=args.data_dir, launcher=args.launcher), sys.stdout)


# ----------------------------------------------------------------------- cleanup


def add_cleanup_parser(sub) -> None:
    """`researcher cleanup`."""
    p = sub.add_parser("cleanup", help="remove sandbox containers left by dead orchestrators")
    p.add_argument("--all", action="store_true", help="remove every sandbox container on this engine, also live runs' ones")
    p.set_defaults(func=cmd_cleanup)


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Run `researcher cleanup`."""
    from orchestrator.sandbox.docker import DockerBackend, connect

    removed = DockerBackend(connect()).reap_orphans(everyone=args.all)
    print(f"removed {removed} sandbox container(s)")
    return EXIT_OK


# ----------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The full `researcher` parser."""
    parser = _Parser(prog="researcher", description="Autonomous PyTorch research with untrusted model code in hardened sandboxes.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_run_parser(sub)
    add_resume_parser(sub)
    add_report_parser(sub)
    add_check_parser(sub)
    add_bench_parser(sub)
    add_doctor_parser(sub)
    add_data_parser(sub)
    add_image_parser(sub)
    add_cleanup_parser(sub)
    add_launcher_parser(sub)
    add_env_defaults(parser)
    return parser


def _terminate(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C so every context manager removes its container.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `researcher` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if hasattr(args, "verbose"):  # the launcher sets up its own logging
        from orchestrator import logs

        logs.setup(args.verbose)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"researcher: error: {inert(exc, multiline=True)}", file=sys.stderr)
        return EXIT_USAGE
    except DataError as exc:
        print(f"researcher: data error: {inert(exc, multiline=True)}", file=sys.stderr)
        return EXIT_USAGE
    except SandboxUnavailable as exc:
        print(f"researcher: no sandbox available: {inert(exc, multiline=True)}", file=sys.stderr)
        return EXIT_NO_SANDBOX
    except ResearcherError as exc:
        print(f"researcher: error: {inert(exc, multiline=True)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("researcher: interrupted; sandbox containers removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `researcher ls | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
