"""`researcher launcher`: start the process that alone holds the Docker socket."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from orchestrator.launcher.config import DEFAULT_ROOT, LauncherConfig
from orchestrator.sandbox.config import DEFAULT_IMAGE


def add_launcher_parser(sub) -> None:
    """`researcher launcher ...`."""
    p = sub.add_parser("launcher", help="hold the Docker socket for an orchestrator that has none (compose)",
                       description="Start sandboxes for orchestrators that talk to it over ipc://ROOT/launcher.sock, "
                                   "within the maxima set here. See docs/deployment.md, 'Privilege separation'.")
    p.add_argument("--root", default=DEFAULT_ROOT,
                   help=f"its socket, the job dirs and staged data; the same path for the engine (default: {DEFAULT_ROOT})")
    p.add_argument("--data-sources", default="",
                   help="directories (':'-separated, absolute) whose prepared data may be staged: the runs dir")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"the only sandbox image it starts (default: {DEFAULT_IMAGE})")
    p.add_argument("--max-memory", default="16g", help="largest memory cap a sandbox may get (default: 16g)")
    p.add_argument("--max-cpus", type=float, default=float(os.cpu_count() or 1), help="largest CPU cap (default: all cores)")
    p.add_argument("--max-pids", type=int, default=4096, help="largest pids cap (default: 4096)")
    p.add_argument("--max-time", type=float, default=86400.0, metavar="S", help="largest job time limit (default: 86400)")
    p.add_argument("--max-sandboxes", type=int, default=64, help="sandboxes alive at once (default: 64)")
    p.add_argument("--runtimes", default="runc", help="runtimes a request may name, comma-separated (default: runc)")
    p.add_argument("--gpus", default="none", help="GPUs it grants: none, all, or ids like 0,1 (default: none)")
    p.add_argument("--client-uid", type=int, default=None, help="the orchestrator's uid (default: the launcher's)")
    p.add_argument("--client-gid", type=int, default=None,
                   help="the orchestrator's gid: the only group that may reach the socket and job dirs (default: the launcher's)")
    p.add_argument("--lease", type=float, default=15.0, metavar="S",
                   help="a client silent this long (killed) loses its sandboxes (default: 15)")
    p.add_argument("--until-idle", type=float, default=None, metavar="S",
                   help="exit once every client has gone for S seconds, after the first one came (compose: "
                        "`docker compose up` ends with the run) (default: serve until SIGTERM)")
    p.set_defaults(func=cmd_launcher)


def config_from_args(args: argparse.Namespace) -> LauncherConfig:
    """The LauncherConfig the flags describe."""
    sources = tuple(os.path.abspath(s) for s in args.data_sources.split(":") if s.strip())
    return LauncherConfig(
        root=os.path.abspath(args.root), data_sources=sources, image=args.image, max_memory=args.max_memory,
        max_cpus=args.max_cpus, max_pids=args.max_pids, max_time_s=args.max_time, max_sandboxes=args.max_sandboxes,
        runtimes=tuple(r.strip() for r in args.runtimes.split(",") if r.strip()), gpus=args.gpus,
        client_uid=args.client_uid, client_gid=args.client_gid, lease_s=args.lease,
    )


def cmd_launcher(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or Ctrl-C; then remove every sandbox it started."""
    from orchestrator.launcher.server import Launcher

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s launcher: %(message)s")
    launcher = Launcher(config_from_args(args))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        launcher.serve(stop, on_ready=lambda: print(f"launcher ready: {launcher.config.address}", flush=True),
                       until_idle_s=args.until_idle)
    finally:
        launcher.close()
    return 0
