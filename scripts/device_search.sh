#!/usr/bin/env bash
# The 10-minute search on a bare GPU machine (Python + torch, no Docker, no package index):
# scripts/device_search.py, with what such a machine lacks brought along.
#
#   scripts/device_search.sh prepare           # here, with pip's index: fills .device/ (git-ignored)
#   scripts/device_search.sh run OUT [BUDGET]  # there: installs .device/wheels, starts the search
#   scripts/device_search.sh wait OUT          # there, in the next call: waits for it to end
#
# `prepare` downloads cp312 manylinux wheels of the project's packages that the GPU image lacks
# (the versions in .venv, else the pins below) and copies Fashion-MNIST's idx files from the
# Debian package into .device/data/FashionMNIST/raw. About 40 MB; the device tool carries it
# when `carry` names `.device`. BUDGET is --time-budget in seconds (default 600); extra arguments
# after it go to device_search.py (e.g. --seeds 1).
#
# A search of 600 s does not fit in one device call (10 minutes at most, start-up included), so
# `run` starts it in its own session (it outlives the call; the machine stays warm for 30 s) and
# waits up to WAIT_S (default 570) seconds; if it is still going, `wait` in the next call waits
# again. Each call copies what there is into OUT: search.log, and at the end search.json,
# report.html and run.sqlite. Exit 0: finished; 75: still running; else the search's error.
set -uo pipefail
cd "$(dirname "$0")/.."
here=${DEVICE_DIR:-.device}  # where `prepare` puts what it brings
step=${1:?usage: scripts/device_search.sh prepare | run OUT [BUDGET] [device_search.py args]}

# Imported by the loop or the worker and missing from the GPU image (its package list is in
# the device library's KINDS.md); optuna's storage packages come along in case it wants them.
packages=(msgspec==0.23.0 pyzmq==27.3.0 optuna==5.0.0 colorlog==6.12.0 docker==7.2.0
          SQLAlchemy==2.1.9 alembic==1.20.1 Mako==1.4.3)

if [ "$step" = prepare ]; then
  py=${PYTHON:-python3}
  rm -rf "$here/wheels" && mkdir -p "$here/wheels" "$here/data/FashionMNIST/raw"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$here/wheels" "${packages[@]}" || exit 1
  src=/usr/share/datasets/fashion-mnist
  [ -d "$src" ] || { echo "device_search: $src is missing: apt-get install dataset-fashion-mnist" >&2; exit 1; }
  cp "$src"/*-ubyte.gz "$here/data/FashionMNIST/raw/" || exit 1
  du -sh "$here"/wheels "$here"/data
  ls "$here/wheels"
  exit 0
fi

state=/tmp/device-search  # on the device machine; outlives one call, not the machine

collect() {  # copy what there is into OUT, say how it stands; exit 0 done, 75 running, else failed
  local out=$1 deadline=$(( SECONDS + ${WAIT_S:-570} ))
  mkdir -p "$out"
  while kill -0 "$(cat "$state/pid")" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 5; done
  cp "$state/search.log" "$out/" 2>/dev/null
  if kill -0 "$(cat "$state/pid")" 2>/dev/null; then
    tail -n 5 "$state/search.log"
    echo "device_search: still running after ${WAIT_S:-570} s; next call: scripts/device_search.sh wait OUT" >&2
    return 75
  fi
  cp "$state"/out/* "$out/" 2>/dev/null
  tail -n 25 "$state/search.log"
  [ -s "$out/search.json" ] && python3 -c "import json, sys; d = json.load(open(sys.argv[1])); c = d['chosen'] or {}; \
print('device_search:', d['gpu'] or 'CPU', d['status'], d['wall_s'], 's;', len(d['candidates']), 'candidates; chosen', \
c.get('id'), 'test', c.get('test_mean'), c.get('test_ci95'), 'selection', c.get('selection_mean'))" "$out/search.json"
  return "$(cat "$state/rc" 2>/dev/null || echo 1)"
}

case $step in
  run)
    out=${2:?usage: scripts/device_search.sh run OUT [BUDGET]}
    budget=${3:-600}
    shift $(( $# < 3 ? $# : 3 ))
    rm -rf "$state" && mkdir -p "$state/out"
    export PYTHONUNBUFFERED=1
    if ls "$here"/wheels/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$here"/wheels/*.whl || exit 1
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    data=()
    [ -d "$here/data/FashionMNIST/raw" ] && data=(--data-dir "$(pwd)/$here/data")
    nvidia-smi -L || true
    setsid bash -c 'echo $$ > "$0/pid"; python3 scripts/device_search.py "$@" > "$0/search.json" 2> "$0/search.log"
                    echo $? > "$0/rc"' "$state" --time-budget "$budget" "${data[@]}" --runs-dir "$state/runs" \
      --out "$state/out" "$@" < /dev/null > /dev/null 2>&1 &
    for _ in $(seq 50); do [ -s "$state/pid" ] && break; sleep 0.1; done
    collect "$out"
    ;;
  wait)
    out=${2:?usage: scripts/device_search.sh wait OUT}
    [ -f "$state/pid" ] || { echo "device_search: no search was started on this machine (a new machine is bare)" >&2; exit 1; }
    collect "$out"
    ;;
  *) echo "device_search: unknown step $step: prepare, run or wait" >&2; exit 2 ;;
esac
