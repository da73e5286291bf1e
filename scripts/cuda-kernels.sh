#!/usr/bin/env bash
# Compiles dfdx's CUDA kernels and the kit's CUDA path with a real nvcc (scripts/cuda-env.sh)
# for each compute capability given (default: 75, a T4, and 90, an H100), without a GPU and
# without linking CUDA's libraries (the kit's `cuda-kernels` feature), then checks that every
# kernel in tools/dfdx became PTX for that GPU. Run by ./test.
# Usage: scripts/cuda-kernels.sh [CAP...]
set -euo pipefail
cd "$(dirname "$0")/.."
export FLOWERS_CUDA_PYPI="${FLOWERS_CUDA_PYPI:-1}"
caps=("$@")
((${#caps[@]})) || caps=(75 90)
kernels="$(find tools/dfdx/src -name '*.cu' | wc -l)"
for cap in "${caps[@]}"; do
  export FLOWERS_CUDA_COMPUTE_CAP="$cap"
  source scripts/cuda-env.sh
  started=$SECONDS
  # (dfdx's build script runs nvcc on every kernel at once, and again when CUDA_COMPUTE_CAP changes.)
  cargo build -q -p flowers_kit --lib --no-default-features --features cuda-kernels --target-dir target/cuda
  out="$(ls -td target/cuda/debug/build/dfdx-*/out | head -1)"
  built=0
  for ptx in "$out"/*.ptx; do
    grep -q "^\.target sm_$cap\b" "$ptx" || { echo "$ptx: not PTX for sm_$cap" >&2; exit 1; }
    built=$((built + 1))
  done
  [ "$built" = "$kernels" ] || { echo "$built PTX files for $kernels kernels in $out" >&2; exit 1; }
  echo "sm_$cap: $kernels CUDA kernels compiled with $("$FLOWERS_CUDA_HOME/bin/nvcc" --version | grep -o 'release [0-9.]*') in $((SECONDS - started)) s"
done
