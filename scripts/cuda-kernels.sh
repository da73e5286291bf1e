#!/usr/bin/env bash
# Compiles dfdx's CUDA kernels and the kit's CUDA path with a real nvcc (scripts/cuda-env.sh)
# for each compute capability given (default: 75, a T4, and 90, an H100), as `./lab --cuda`
# builds the notebooks' kit (--cfg flowers_kit_cuda, see flowers_kit/build.rs), without a GPU
# and without linking CUDA's libraries (cudarc's ci-check). Then checks that every kernel in
# tools/dfdx became PTX for that GPU, written by this nvcc (not left from an earlier build).
# Then compiles the kernels dfdx compiles at run time with NVRTC (scripts/nvrtc-check.py).
# What it does not check: PTX is not assembled for the GPU (the driver does that when the kit
# loads it).
# Run by ./test. Usage: scripts/cuda-kernels.sh [CAP...]
set -euo pipefail
cd "$(dirname "$0")/.."
export FLOWERS_CUDA_PYPI="${FLOWERS_CUDA_PYPI:-1}"
caps=("$@")
((${#caps[@]})) || caps=(75 90)
kernels="$(find tools/dfdx/src -name '*.cu' | wc -l)"
build() {
  # The kit with CUDA as `./lab --cuda` builds it for the notebooks. Prints dfdx's OUT_DIR.
  RUSTFLAGS="--cfg flowers_kit_cuda" cargo build -q -p flowers_kit --lib --no-default-features \
    --features cudarc-ci-check --target-dir target/cuda --message-format=json \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and m["package_id"].split("#")[0].endswith("tools/dfdx"):
        print(m["out_dir"])'
}
for cap in "${caps[@]}"; do
  export FLOWERS_CUDA_COMPUTE_CAP="$cap"
  source scripts/cuda-env.sh
  release="$("$FLOWERS_CUDA_HOME/bin/nvcc" --version | grep -o 'release [0-9.]*, V[0-9.]*')"
  started=$SECONDS
  out="$(build)"
  [ -n "$out" ] || { echo "dfdx's build script did not run" >&2; exit 1; }
  if [ -n "$(grep -L "Cuda compilation tools, $release" "$out"/*.ptx)" ]; then
    # PTX of another nvcc (dfdx's build script reruns for a new GPU, not for a new compiler).
    echo "== PTX left by another nvcc in $out: compiling again"
    rm -f "$out"/*.ptx
    touch tools/dfdx/src/tensor_ops/utilities/compatibility.cuh
    out="$(build)"
  fi
  # The kit's own CUDA code, which flowers_kit/build.rs turns on for that cfg.
  grep -q first_cuda_device target/cuda/debug/libflowers_kit.rlib \
    || { echo "the kit was built without its CUDA code (--cfg flowers_kit_cuda, build.rs)" >&2; exit 1; }
  built=0
  for ptx in "$out"/*.ptx; do
    grep -q "^\.target sm_$cap\b" "$ptx" || { echo "$ptx: not PTX for sm_$cap" >&2; exit 1; }
    grep -q "Cuda compilation tools, $release" "$ptx" || { echo "$ptx: not written by nvcc $release" >&2; exit 1; }
    built=$((built + 1))
  done
  [ "$built" = "$kernels" ] || { echo "$built PTX files for $kernels kernels in $out" >&2; exit 1; }
  # The kernels dfdx compiles at run time with NVRTC, from the headers it would use.
  LD_LIBRARY_PATH="$FLOWERS_CUDA_HOME/lib" python3 -I scripts/nvrtc-check.py "$FLOWERS_CUDA_HOME/lib/libnvrtc.so.13" \
    tools/dfdx/src "$cap" "$FLOWERS_CUDA_HOME/include" "$out"
  echo "sm_$cap: $kernels CUDA kernels compiled to PTX by nvcc $release in $((SECONDS - started)) s"
done
