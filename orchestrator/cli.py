"""The `researcher` command line.

Exit codes: 0 success (the model passed), 1 the model failed (a recorded
failure), 2 bad usage or an unreadable file, 3 no sandbox available (no
engine, no image, stale image, no GPU runtime), 130 interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from orchestrator.exceptions import DataError, ResearcherError, SandboxUnavailable, UsageError
from orchestrator.sandbox.config import DEFAULT_IMAGE, DEVICES, RUNTIMES, SandboxConfig, validate

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_SANDBOX, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with our usage message (its default, kept explicit)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def add_sandbox_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that set the sandbox's limits (shared by check, run and bench)."""
    group = parser.add_argument_group("sandbox")
    group.add_argument("--timeout", type=float, default=None, metavar="S",
                       help="wall-clock limit of one job in seconds, enforced by killing the container (default: 120 for a check, 600 with --train)")
    group.add_argument("--memory", default="2g", help="memory cap of the container, swap included (default: 2g)")
    group.add_argument("--cpus", type=float, default=1.0, help="CPU cap of the container; torch threads follow it (default: 1)")
    group.add_argument("--pids", type=int, default=256, help="process/thread cap of the container (default: 256)")
    group.add_argument("--runtime", choices=RUNTIMES, default="runc", help="container runtime: runc or runsc (gVisor) (default: runc)")
    group.add_argument("--device", choices=DEVICES, default="cpu", help="train on cpu or cuda (one GPU per sandbox) (default: cpu)")
    group.add_argument("--image", default=DEFAULT_IMAGE, help=f"sandbox image (default: {DEFAULT_IMAGE})")


def sandbox_config(args: argparse.Namespace, *, default_timeout: float) -> SandboxConfig:
    """A validated SandboxConfig from the sandbox flags."""
    return validate(SandboxConfig(
        image=args.image, memory=args.memory, cpus=args.cpus, pids=args.pids, runtime=args.runtime,
        device=args.device, timeout_s=args.timeout if args.timeout is not None else default_timeout,
    ))


def docker_backend_factory(image: str):
    """A factory of Docker backends that connects lazily and checks ``image`` first."""
    def make():
        from orchestrator.image import check_image
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
    t.add_argument("--epochs", type=int, default=10, help="epochs per seed (default: 10)")
    t.add_argument("--seeds", type=int, default=1, help="number of seeds (training runs) to aggregate (default: 1)")
    t.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    t.add_argument("--optimizer", choices=("adamw", "adam", "sgd"), default="adamw", help="optimiser (default: adamw)")
    t.add_argument("--out", type=Path, help="write the JSON result and the plots (PNG) into this directory")
    add_sandbox_flags(p)
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    """Run `researcher check`."""
    from orchestrator.check import CheckRequest, parse_shape, print_outcome, run_check
    from sandbox_image.protocol import TrainSpec

    if args.epochs < 1 or args.seeds < 1 or args.batch_size < 1 or args.lr <= 0:
        raise UsageError("--epochs, --seeds and --batch-size must be >= 1 and --lr > 0")
    if (args.train or args.out) and not args.dataset and not args.data_dir:
        raise UsageError("--train needs --dataset NAME (e.g. --dataset digits)")
    train = None
    if args.train:
        train = TrainSpec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          optimizer=args.optimizer, seeds=tuple(range(args.seeds)))
    request = CheckRequest(
        path=args.model, class_name=args.class_name,
        input_shape=parse_shape(args.input_shape) if args.input_shape else None,
        num_classes=args.num_classes, train=train, dataset=args.dataset, data_dir=args.data_dir, out=args.out,
    )
    if request.num_classes is not None and request.num_classes < 1:
        raise UsageError("--num-classes must be >= 1")
    config = sandbox_config(args, default_timeout=600.0 if args.train else 120.0)
    outcome = run_check(request, docker_backend_factory(config.image), config)
    print_outcome(outcome, as_json=args.json)
    return outcome.exit_code


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
    add_check_parser(sub)
    try:
        from orchestrator.image import add_image_parser
    except ImportError:  # pragma: no cover - during development only
        add_image_parser = None
    if add_image_parser is not None:
        add_image_parser(sub)
    add_cleanup_parser(sub)
    return parser


def _terminate(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C so every context manager removes its container.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `researcher` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"researcher: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DataError as exc:
        print(f"researcher: data error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SandboxUnavailable as exc:
        print(f"researcher: no sandbox available: {exc}", file=sys.stderr)
        return EXIT_NO_SANDBOX
    except ResearcherError as exc:
        print(f"researcher: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("researcher: interrupted; sandbox containers removed", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
