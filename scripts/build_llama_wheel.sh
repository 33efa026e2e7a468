#!/usr/bin/env bash
# Build a portable CPU wheel of llama-cpp-python from source into the wheel cache and print
# its path. Idempotent: an existing wheel of the same version *and build flags* is reused (the
# build takes about 5 minutes on 2 cores). Concurrent callers wait on a lock instead of
# building twice.
#   LLAMA_CPP_VERSION   version to build (default below)
#   WHEEL_CACHE         where wheels live (default ~/.cache/pytorch-researcher/wheels)
#   PYTHON              interpreter whose ABI the wheel targets (default python3.11)
#   CMAKE_ARGS          replaces the build flags below (and so the cache key)
#
# The flags: no -march=native (the cached wheel must run on any x86-64 of this kind), and no
# AVX-512 or AMX kernels. On Xeons with AVX-512 and AMX (Sapphire Rapids and later, as these
# machines may have) a build with them died on its first completion with a general protection
# fault in libggml-cpu.so; AVX2/FMA/F16C kernels run everywhere here and answer.
# LLAVA_BUILD=OFF leaves out the multimodal library (mtmd), which a text-only server never
# loads: on a 2-core AMD EPYC the build took 308 s instead of 370 s (2026-12-02).
set -euo pipefail

LLAMA_CPP_VERSION=${LLAMA_CPP_VERSION:-0.3.36}
WHEEL_CACHE=${WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pytorch-researcher/wheels}
PYTHON=${PYTHON:-python3.11}
START=$SECONDS

say() { printf '[llama-wheel %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { printf '[llama-wheel] error: %s\n' "$*" >&2; exit 1; }

DEFAULT_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
-DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAVA_BUILD=OFF"
CMAKE_ARGS=${CMAKE_ARGS:-$DEFAULT_CMAKE_ARGS}
# The cache key names the flags: a wheel built before a change of flags (such as the one that
# crashed on AVX-512/AMX hosts) lies elsewhere and is never picked up again.
FLAVOUR=$(printf '%s' "$CMAKE_ARGS" | sha256sum | cut -c1-12)
BUILD_DIR="$WHEEL_CACHE/llama-$LLAMA_CPP_VERSION-$FLAVOUR"

find_wheel() {
    # The wheel is tagged py3-none-<platform>: the library is loaded with ctypes, not built
    # against one Python's ABI.
    local platform
    platform=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_platform().replace("-", "_").replace(".", "_"))')
    ls "$BUILD_DIR"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*-"$platform".whl 2>/dev/null | head -n1
}

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; set PYTHON to a Python 3.11 interpreter"
mkdir -p "$WHEEL_CACHE" "$BUILD_DIR"
printf '%s\n' "$CMAKE_ARGS" >"$BUILD_DIR/CMAKE_ARGS"
exec 9>"$WHEEL_CACHE/.llama-build.lock"
flock 9  # another build of the same cache finishes first; then its wheel is reused

wheel=$(find_wheel || true)
if [ -z "$wheel" ]; then
    command -v c++ >/dev/null || command -v g++ >/dev/null \
        || die "a C++ compiler is needed to build llama-cpp-python (apt-get install build-essential)"
    say "building llama-cpp-python $LLAMA_CPP_VERSION from source (about 5 min on 2 cores)"
    say "flags: $CMAKE_ARGS"
    CMAKE_ARGS="$CMAKE_ARGS" \
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        "$PYTHON" -m pip wheel --quiet --no-deps --no-cache-dir "llama-cpp-python==$LLAMA_CPP_VERSION" \
        -w "$BUILD_DIR" >&2 || die "building llama-cpp-python failed (see pip's output above)"
    wheel=$(find_wheel || true)
    [ -n "$wheel" ] || die "pip reported success but no wheel is in $BUILD_DIR"
    say "built $(basename "$wheel")"
fi
printf '%s\n' "$wheel"
