#!/usr/bin/env bash
# Set up this checkout on a Debian 12 machine, as root: Docker engine (+ gVisor), docker-compose,
# the Fashion-MNIST package, .venv with the project, the sandbox image and the orchestrator's
# image (for compose.yaml; both built offline, no registry needed).
# Idempotent: a second run only checks, and takes seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

START=$SECONDS
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
DOCKER_WAIT_S=${DOCKER_WAIT_S:-60}
PYTHON=${PYTHON:-python3.11}

say() { printf '[setup %4ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

apt_install() {
    # Install only what is missing; apt-get update once per run.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "need root to apt-get install ${missing[*]}"
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -q >/dev/null; APT_UPDATED=1; fi
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

install_packages() {
    # docker-compose (v1, the one Debian ships) runs compose.yaml and its tests.
    apt_install docker.io debootstrap dataset-fashion-mnist ca-certificates docker-compose
    # Optional: gVisor is nice to have, never required.
    apt_install runsc || say "warning: runsc (gVisor) not installed; --runtime runsc unavailable"
}

alive() {
    # A pid that runs and is not a zombie (a killed dockerd can linger as one).
    local stat
    stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    case "$stat" in Z*) return 1 ;; *) return 0 ;; esac
}

remove_stale_pidfiles() {
    # dockerd refuses to start while its pid file names a process that still exists; after a
    # kill (a CI runner ends every process) the file, or a zombie, is left behind.
    local f pid
    for f in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null || true)
        if [ -z "$pid" ] || ! alive "$pid"; then
            say "removing stale $f"
            rm -f "$f"
        fi
    done
}

start_dockerd() {
    docker info >/dev/null 2>&1 && return 0
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        systemctl start docker
    else
        remove_stale_pidfiles
        say "starting dockerd (log: $DOCKERD_LOG)"
        nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    local deadline=$((SECONDS + DOCKER_WAIT_S))
    until docker info >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "dockerd did not answer within ${DOCKER_WAIT_S}s; see $DOCKERD_LOG"
        sleep 0.5
    done
    say "dockerd is up"
}

register_gvisor() {
    # runsc needs --network=none and --host-uds=open (the job's ZeroMQ ipc socket). A GPU job under
    # gVisor also needs nvproxy, gVisor's proxy of NVIDIA's driver: a runsc that has it gets
    # --nvproxy=true (a container given no GPU still gets none). Debian 12's runsc (20221219) has
    # no such flag and would refuse every container given it: there runsc serves cpu jobs only.
    command -v runsc >/dev/null || return 0
    local args=(--network=none --host-uds=open)
    # grep without -q reads all of runsc's output: no SIGPIPE to trip pipefail
    if runsc flags 2>&1 | grep -E '^[[:space:]]*-nvproxy([[:space:]]|$)' >/dev/null; then
        args+=(--nvproxy=true)
    fi
    [ "$(gvisor_args)" = "${args[*]}" ] && return 0
    say "registering the gVisor runtime in /etc/docker/daemon.json: runsc ${args[*]}"
    [[ " ${args[*]} " == *" --nvproxy=true "* ]] ||
        say "note: this runsc has no nvproxy; --runtime runsc with --device cuda needs a newer gVisor"
    mkdir -p /etc/docker
    "$PYTHON" - "$(command -v runsc)" "${args[@]}" <<'EOF'
import json, pathlib, sys
path = pathlib.Path("/etc/docker/daemon.json")
config = json.loads(path.read_text()) if path.exists() and path.read_text().strip() else {}
config.setdefault("runtimes", {})["runsc"] = {"path": sys.argv[1], "runtimeArgs": sys.argv[2:]}
path.write_text(json.dumps(config, indent=2) + "\n")
EOF
    # dockerd reloads its runtimes on SIGHUP; running containers are untouched.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        systemctl reload docker
    else
        kill -HUP "$(cat /var/run/docker.pid)"
    fi
    for _ in $(seq 20); do
        [ "$(gvisor_args)" = "${args[*]}" ] && return 0
        sleep 0.5
    done
    die "dockerd did not pick up the runsc runtime; check /etc/docker/daemon.json and $DOCKERD_LOG"
}

gvisor_args() {
    # The arguments dockerd passes to runsc, space-separated; empty when it has no runsc.
    docker info --format '{{with index .Runtimes "runsc"}}{{join .Args " "}}{{end}}' 2>/dev/null || true
}

make_venv() {
    command -v "$PYTHON" >/dev/null || apt_install python3 python3-venv
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (Debian 12: apt-get install python3)"
    "$PYTHON" -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    [ -x .venv/bin/python ] || { say "creating .venv with $PYTHON"; "$PYTHON" -m venv .venv; }
    # Reinstall only when the project's metadata changed.
    local stamp=.venv/.setup-stamp
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c 'import orchestrator' 2>/dev/null; then
        say "pip install -e '.[test]'"
        .venv/bin/python -m pip install -q -e '.[test]'
        echo "$want" >"$stamp"
    fi
}

build_image() {
    # `image build` options follow RESEARCHER_* variables; these two would change what is built.
    unset RESEARCHER_ORCHESTRATOR RESEARCHER_TAG
    if .venv/bin/researcher image build --help >/dev/null 2>&1; then
        .venv/bin/researcher image build
    else
        .venv/bin/python -m orchestrator.image build
    fi
}

build_orchestrator_image() {
    # pytorch-researcher:latest for compose.yaml: on the sandbox's offline base, plus the wheels
    # the host's pip downloads once; cached by content hash like the sandbox image.
    .venv/bin/researcher image build --orchestrator
}

install_packages;  say "packages ok"
start_dockerd;     say "docker ok"
register_gvisor;   say "gVisor ok"
make_venv;         say ".venv ok"
build_image;       say "sandbox image ok"
build_orchestrator_image; say "orchestrator image ok"
say "setup done"
