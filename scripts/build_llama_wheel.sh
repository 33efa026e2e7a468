#!/usr/bin/env bash
# Build a portable CPU wheel of llama-cpp-python from source into the wheel cache and print
# its path. Idempotent: an existing wheel of that version is reused (the build takes about
# 8 minutes on 2 cores). Concurrent callers wait on a lock instead of building twice.
#   LLAMA_CPP_VERSION   version to build (default below)
#   WHEEL_CACHE         where wheels live (default ~/.cache/pytorch-researcher/wheels)
#   PYTHON              interpreter whose ABI the wheel targets (default python3.11)
set -euo pipefail

LLAMA_CPP_VERSION=${LLAMA_CPP_VERSION:-0.3.36}
WHEEL_CACHE=${WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pytorch-researcher/wheels}
PYTHON=${PYTHON:-python3.11}
START=$SECONDS

say() { printf '[llama-wheel %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { printf '[llama-wheel] error: %s\n' "$*" >&2; exit 1; }

find_wheel() {
    # The wheel is tagged py3-none-<platform>: the library is loaded with ctypes, not built
    # against one Python's ABI.
    local platform
    platform=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_platform().replace("-", "_").replace(".", "_"))')
    ls "$WHEEL_CACHE"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*-"$platform".whl 2>/dev/null | head -n1
}

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; set PYTHON to a Python 3.11 interpreter"
mkdir -p "$WHEEL_CACHE"
exec 9>"$WHEEL_CACHE/.llama-build.lock"
flock 9  # another build of the same cache finishes first; then its wheel is reused

wheel=$(find_wheel || true)
if [ -z "$wheel" ]; then
    command -v c++ >/dev/null || command -v g++ >/dev/null \
        || die "a C++ compiler is needed to build llama-cpp-python (apt-get install build-essential)"
    say "building llama-cpp-python $LLAMA_CPP_VERSION from source (about 8 min on 2 cores)"
    # GGML_NATIVE=OFF: no -march=native, so the cached wheel runs on any x86-64 of this kind.
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        "$PYTHON" -m pip wheel --quiet --no-deps "llama-cpp-python==$LLAMA_CPP_VERSION" \
        -w "$WHEEL_CACHE" >&2 || die "building llama-cpp-python failed (see pip's output above)"
    wheel=$(find_wheel || true)
    [ -n "$wheel" ] || die "pip reported success but no wheel is in $WHEEL_CACHE"
    say "built $(basename "$wheel")"
fi
printf '%s\n' "$wheel"
