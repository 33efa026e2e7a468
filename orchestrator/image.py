"""`researcher image build|check`: build or check the sandbox image, or the orchestrator's.

Command line: ``python -m orchestrator.image build [--force] [--base-image IMAGE]``;
``build --orchestrator`` builds the orchestrator's own image instead (``orchestrator.deploy``).
The images themselves are built and inspected by ``orchestrator.sandbox.image`` and
``orchestrator.deploy``; this command module imports them, never the other way round.
"""

from __future__ import annotations

import argparse
import sys

from orchestrator.deploy import ORCHESTRATOR_IMAGE, build_orchestrator_image, check_orchestrator_image
from orchestrator.exceptions import ResearcherError, SandboxUnavailable, UsageError
from orchestrator.sandbox.docker import connect
from orchestrator.sandbox.image import DEFAULT_IMAGE, ImageInfo, build_image, check_image


def _configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``build`` and ``check`` subcommands to an ``image`` parser."""
    commands = parser.add_subparsers(dest="image_command", required=True, metavar="{build,check}")
    which = f"(default {DEFAULT_IMAGE}, or {ORCHESTRATOR_IMAGE} with --orchestrator)"
    build = commands.add_parser("build", help="build the sandbox image, or the orchestrator's (cached by content hash)")
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    build.add_argument(
        "--base-image",
        metavar="IMAGE",
        help="build on this image (e.g. pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime) "
        "instead of the offline Debian base",
    )
    build.add_argument("--orchestrator", action="store_true",
                       help="build the orchestrator's image for compose.yaml instead of the sandbox image")
    build.add_argument("--tag", help=f"image name {which}")
    check = commands.add_parser("check", help="show the sandbox image (or the orchestrator's) and check its protocol")
    check.add_argument("--orchestrator", action="store_true", help="show the orchestrator's image instead")
    check.add_argument("--tag", help=f"image name {which}")


def add_image_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``image build|check`` on a CLI's subparsers (``args.func`` is run_image_command)."""
    parser = subparsers.add_parser("image", help="build or check the sandbox image (or the orchestrator's)")
    _configure(parser)
    parser.set_defaults(func=run_image_command)
    return parser


def _describe(info: ImageInfo) -> str:
    return (
        f"{info.tag}  {info.id[7:19]}  protocol {info.protocol}  "
        f"{info.size_bytes / 1e9:.2f} GB  hash {info.content_hash}"
    )


def run_image_command(args: argparse.Namespace) -> int:
    """Run a parsed ``image`` subcommand; ResearcherError propagates to the caller."""
    tag = args.tag or (ORCHESTRATOR_IMAGE if args.orchestrator else DEFAULT_IMAGE)
    if args.image_command == "build":
        build = build_orchestrator_image if args.orchestrator else build_image
        info = build(force=args.force, base_image=args.base_image, tag=tag)
    elif args.image_command == "check":
        info = (check_orchestrator_image if args.orchestrator else check_image)(connect(), tag)
    else:
        raise UsageError(f"unknown image command {args.image_command!r}: use build or check")
    print(_describe(info))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestrator.image build|check``; exit 2 on usage, 3 when no sandbox."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.image",
        description="The sandbox image: build it (cached by content hash), inspect it, refuse a stale one."
    )
    _configure(parser)
    args = parser.parse_args(argv)
    try:
        return run_image_command(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SandboxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ResearcherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
