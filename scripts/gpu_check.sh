#!/usr/bin/env bash
# GPU check for a machine with a GPU but no Docker engine (CI never has a GPU):
# the gpu-marked tests, then the sandbox's training recipe on CUDA against CPU.
#
#   scripts/gpu_check.sh OUT_DIR [CANDIDATES_JSON] [DATA_DIR]
#
# CANDIDATES_JSON comes from `python scripts/device_bench.py render --out FILE`
# (rendered where the project's full environment is; default: render it here).
# DATA_DIR holds FashionMNIST/raw/*.gz when the Debian package is absent.
# Writes OUT_DIR/pytest_gpu.log, OUT_DIR/device_bench.json and OUT_DIR/device_bench.log.
# DEVICES=cpu runs only the CPU half (no gpu tests); without a GPU it exits 3.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [CANDIDATES_JSON] [DATA_DIR]}
candidates=${2:-$out/candidates.json}
data_dir=${3:-}
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1

nvidia-smi -L || echo "gpu_check: nvidia-smi found no GPU"
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
if [ "${DEVICES:-cuda,cpu}" != cpu ] && ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: torch sees no CUDA device here. This check is for a GPU machine; DEVICES=cpu runs its CPU half only." >&2
  exit 3
fi

tests=0
if [ "${DEVICES:-cuda,cpu}" != cpu ]; then
  echo "== pytest -m gpu"
  "$python" -m pytest -q -m gpu -p no:cacheprovider tests/evaluator/test_recipe.py tests/orchestrator/test_runner.py \
    2>&1 | tee "$out/pytest_gpu.log"
  tests=$?
fi

echo "== device_bench"
[ -f "$candidates" ] || "$python" scripts/device_bench.py render --out "$candidates" || exit 1
"$python" scripts/device_bench.py run --candidates "$candidates" ${data_dir:+--data-dir "$data_dir"} \
  --devices "${DEVICES:-cuda,cpu}" --out "$out/device_bench.json" 2>&1 | tee "$out/device_bench.log"
bench=$?
echo "gpu_check: tests exit $tests, bench exit $bench"
exit $(( tests || bench ))
