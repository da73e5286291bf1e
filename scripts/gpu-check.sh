#!/usr/bin/env bash
# The GPU check (issue 27), in two halves, for the day a session is lent a GPU machine: that
# machine starts bare, reaches nothing outside, and gives 15 minutes in all.
#
#   scripts/gpu-check.sh build DIR   here, without a GPU: DIR gets what the GPU machine needs,
#       under 64 MiB with the repository's tracked files (which travel beside it): the CUDA
#       tests (flowers_kit/tests/cuda.rs) and the `flowers` command line, built with
#       `--features cuda` for compute capability $FLOWERS_GPU_CHECK_CAP (default 90: an H100 or
#       H200) with NVIDIA's CUDA 13.0 compiler from PyPI, linked against CUDA 13's libraries
#       and stripped; the golden data the tests read; and SHA256SUMS and BUILD (what was built).
#   scripts/gpu-check.sh run DIR     there: checks DIR against SHA256SUMS, finds CUDA 13's
#       libraries, runs the CUDA tests (every family's features against TensorFlow's, training
#       and fine-tuning against the CPU's steps) and the benchmarks (extraction images/s at
#       batch 64, seconds per fine-tuning step, the GPU's against this machine's CPU), and
#       writes tests.log, bench.txt and summary.txt to $OUT (default DIR/results). Where no
#       NVIDIA GPU answers, it says so in one line and exits 1, before anything else.
#
# With the device tool: `scripts/gpu-check.sh build .gpu-check` here (.gpu-check is ignored),
# then run `scripts/gpu-check.sh run .gpu-check` there with `carry: [".gpu-check"]`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
usage() {
  echo "usage: scripts/gpu-check.sh build DIR | run DIR" >&2
  exit 2
}
(($# == 2)) || usage
verb="$1"
dir="$2"
# What may travel in all (the device tool's limit), the repository's tracked files included.
limit=$((64 * 1024 * 1024))

build() {
  cd "$repo"
  local cap="${FLOWERS_GPU_CHECK_CAP:-90}"
  [[ $cap =~ ^[0-9]{2,3}$ ]] || { echo "gpu-check: FLOWERS_GPU_CHECK_CAP='$cap' is not a compute capability such as 90" >&2; exit 2; }
  export FLOWERS_CUDA_PYPI=1 FLOWERS_CUDA_COMPUTE_CAP="$cap"
  # shellcheck source=scripts/cuda-env.sh
  source scripts/cuda-env.sh
  local nvcc_release
  nvcc_release="$(nvcc --version | grep -o 'release [0-9.]*, V[0-9.]*')"

  # CUDA's libraries to link against (cudarc 0.9 links them by name), in a venv of their own:
  # only this script needs them.
  local venv="$repo/.venv-cuda-link"
  if ! cmp -s scripts/requirements-cuda-link.txt "$venv/.requirements-installed"; then
    echo "== installing CUDA 13.0's cuBLAS, cuRAND and NVRTC from PyPI into $venv (about 570 MB)" >&2
    { [ -x "$venv/bin/pip" ] || python3 -m venv --clear "$venv"; } \
      && "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/requirements-cuda-link.txt \
      && cp scripts/requirements-cuda-link.txt "$venv/.requirements-installed" \
      || { echo "gpu-check: installing scripts/requirements-cuda-link.txt failed" >&2; exit 1; }
  fi
  local libs
  libs="$("$venv/bin/python" -c 'import nvidia, pathlib; print(pathlib.Path(nvidia.__path__[0]) / "cu13" / "lib")')"
  # The linker's view: unversioned names for -l, each pointing at the library's soname, and a
  # stub of the driver's libcuda.so.1 (no wheel carries it) defining every driver function
  # cudarc declares, each answering CUDA_ERROR_STUB_LIBRARY (34) as NVIDIA's own stub does.
  # At run time the GPU machine's own libraries answer to those sonames.
  local link="$repo/target/gpu-check/link"
  rm -rf "$link" && mkdir -p "$link"
  for soname in libnvrtc.so.13 libcurand.so.10 libcublas.so.13 libcublasLt.so.13; do
    [ -f "$libs/$soname" ] || { echo "gpu-check: $libs/$soname is missing" >&2; exit 1; }
    ln -s "$libs/$soname" "$link/${soname%%.so.*}.so"
  done
  local cudarc
  cudarc="$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c 'import json, sys
print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')"
  grep -o 'pub fn cu[A-Za-z0-9_]*' "$(dirname "$cudarc")/src/driver/sys.rs" | sort -u \
    | sed 's/pub fn \(.*\)/int \1(void) { return 34; }/' > "$link/libcuda-stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/libcuda-stub.c"

  # The binaries, in a target folder of their own (other flags than the usual builds).
  local target="$repo/target/gpu-check"
  export RUSTFLAGS="-L native=$link -C link-arg=-Wl,-rpath-link,$link"
  local started=$SECONDS
  echo "== building the CUDA tests and the command line for sm_$cap (nvcc $nvcc_release)" >&2
  local tests
  tests="$(cargo test --release --locked -p flowers_kit --features cuda --test cuda --no-run \
    --target-dir "$target" --message-format=json \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')"
  [ -x "$tests" ] || { echo "gpu-check: the CUDA tests did not build" >&2; exit 1; }
  cargo build -q --release --locked -p flowers_kit --features cuda --bin flowers --target-dir "$target"
  local seconds=$((SECONDS - started))

  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  rm -rf "$dir/bin" "$dir/shared" "$dir/results" "$dir/SHA256SUMS" "$dir/BUILD"
  mkdir -p "$dir/bin" "$dir/shared/golden/images" "$dir/shared/golden/families"
  strip -o "$dir/bin/cuda-tests" "$tests"
  strip -o "$dir/bin/flowers" "$target/release/flowers"
  # Every library the binaries need must be glibc's or CUDA 13's, which `run` finds there (the
  # linker drops the ones nothing calls: cuRAND, today).
  local cuda_sonames=() soname
  for soname in $(readelf -d "$dir/bin/cuda-tests" "$dir/bin/flowers" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | sort -u); do
    case "$soname" in
      libc.so.6 | libm.so.6 | libgcc_s.so.1 | ld-linux-x86-64.so.2 | libpthread.so.0 | libdl.so.2 | librt.so.1) ;;
      libcuda.so.1 | libnvrtc.so.13 | libcurand.so.10) cuda_sonames+=("$soname") ;;
      libcublas.so.13) cuda_sonames+=("$soname" libcublasLt.so.13) ;; # cuBLAS loads cuBLASLt
      *) echo "gpu-check: the binaries need $soname, which a GPU machine need not have" >&2; exit 1 ;;
    esac
  done
  [[ " ${cuda_sonames[*]} " == *" libcuda.so.1 "* ]] || { echo "gpu-check: the binaries do not link CUDA's driver: not a CUDA build" >&2; exit 1; }
  # The data flowers_kit/tests/cuda.rs reads (FLOWERS_TEST_SHARED): the golden photos,
  # TensorFlow's features, MobileNet V2's weights for its variants, the families' generator.
  local golden="$repo/../shared/golden"
  cp "$golden"/images/*.png "$dir/shared/golden/images/"
  local variants
  variants="$(grep -o 'CUDA_VARIANTS: \[&str; [0-9]*\] = \[[^]]*\]' flowers_kit/tests/cuda.rs | grep -o '"[^"]*"' | tr -d '"' || true)"
  [ -n "$variants" ] || { echo "gpu-check: no CUDA_VARIANTS in flowers_kit/tests/cuda.rs" >&2; exit 1; }
  for variant in $variants; do
    cp "$golden/mobilenet_v2_${variant}_no_top.h5" "$golden/mobilenet_v2_${variant}.safetensors" "$dir/shared/golden/"
  done
  for family in mobilenet_v3_large efficientnet_b0 resnet50_v2 inception_v3 nasnet_mobile; do
    cp "$golden/families/$family".{json,keras_layout.json,safetensors} "$dir/shared/golden/families/"
  done
  cat > "$dir/BUILD" <<EOF
commit=$(git rev-parse HEAD)$(git diff --quiet HEAD || echo +changes)
compute_capability=$cap
nvcc=$nvcc_release
cuda_sonames=${cuda_sonames[*]}
built=$(date -u +%Y-%m-%dT%H:%MZ) in ${seconds} s on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
EOF
  (cd "$dir" && find bin shared BUILD -type f | sort | xargs sha256sum > SHA256SUMS)
  local size tree
  size="$(du -sb "$dir" | cut -f1)"
  tree="$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s}')"
  echo "gpu-check: $dir holds $((size / 1024 / 1024)) MiB (bin $(du -sm "$dir/bin" | cut -f1), shared $(du -sm "$dir/shared" | cut -f1)); with the repository's $((tree / 1024 / 1024)) MiB of tracked files, $(((size + tree) / 1024 / 1024)) of the 64 MiB that may travel; built in ${seconds} s"
  if ((size + tree > limit)); then
    echo "gpu-check: over the 64 MiB that may travel to the GPU machine" >&2
    exit 1
  fi
}

# The first folder holding `soname` among the places a GPU machine keeps CUDA's libraries.
find_library() {
  local soname="$1" d
  for d in "${library_dirs[@]}"; do
    [ -e "$d/$soname" ] && { echo "$d"; return 0; }
  done
  return 1
}

run() {
  # First: is there a GPU at all? One line, and out.
  local gpu
  gpu="$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null | head -n1 || true)"
  if [ -z "$gpu" ]; then
    echo "gpu-check: no NVIDIA GPU answers here (nvidia-smi $(command -v nvidia-smi >/dev/null && echo 'lists none' || echo 'is not installed')): run this on a machine with one" >&2
    exit 1
  fi
  [ -f "$dir/SHA256SUMS" ] && [ -f "$dir/BUILD" ] \
    || { echo "gpu-check: $dir is not a package from 'scripts/gpu-check.sh build' (no SHA256SUMS or BUILD)" >&2; exit 2; }
  dir="$(cd "$dir" && pwd)"
  (cd "$dir" && sha256sum --quiet --strict -c SHA256SUMS) \
    || { echo "gpu-check: $dir does not match its SHA256SUMS: build it again" >&2; exit 2; }
  local built_cap gpu_cap
  built_cap="$(sed -n 's/^compute_capability=//p' "$dir/BUILD")"
  gpu_cap="$(cut -d, -f2 <<<"$gpu" | tr -d ' .')"
  # PTX for sm_XY runs on that GPU and later ones (the driver compiles it), not on earlier.
  if [[ ! $gpu_cap =~ ^[0-9]+$ ]] || ((gpu_cap < built_cap)); then
    echo "gpu-check: this GPU ($gpu) is older than the build's sm_$built_cap: build with FLOWERS_GPU_CHECK_CAP=$gpu_cap" >&2
    exit 2
  fi
  # CUDA 13's libraries: the driver's, a toolkit's, or the Python packages' (PyTorch's).
  library_dirs=()
  local d py
  IFS=: read -r -a library_dirs <<<"${LD_LIBRARY_PATH:-}"
  library_dirs+=(/usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64
    /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
  for py in python3 /opt/*/.venv/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    while IFS= read -r d; do
      library_dirs+=("$d")
    done < <("$py" -c 'import glob, sys
for p in sys.path:
    for d in sorted(glob.glob(p + "/nvidia/cu13/lib") + glob.glob(p + "/nvidia/*/lib")):
        print(d)' 2>/dev/null || true)
  done
  local path="" missing=() found
  for soname in $(sed -n 's/^cuda_sonames=//p' "$dir/BUILD"); do
    if found="$(find_library "$soname")"; then
      case ":$path:" in *":$found:"*) ;; *) path="${path:+$path:}$found" ;; esac
    else
      missing+=("$soname")
    fi
  done
  if ((${#missing[@]})); then
    echo "gpu-check: CUDA 13's ${missing[*]} not found in ${library_dirs[*]}" >&2
    exit 2
  fi
  export LD_LIBRARY_PATH="$path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local out="${OUT:-$dir/results}"
  mkdir -p "$out"
  local home
  home="$(mktemp -d)"
  export FLOWERS_KIT_HOME="$home" FLOWERS_TEST_SHARED="$dir/shared" RUST_BACKTRACE=1
  {
    echo "GPU: $gpu"
    cat "$dir/BUILD"
    echo "libraries: $path"
  } > "$out/summary.txt"
  cat "$out/summary.txt"

  local status=0 started=$SECONDS
  echo "== the CUDA tests"
  # One test at a time: each opens the GPU, and their output stays in order.
  "$dir/bin/cuda-tests" --test-threads=1 --nocapture 2>&1 | tee "$out/tests.log" || status=1
  echo "tests: $(grep -E '^test result:' "$out/tests.log" || echo 'no result line') ($((SECONDS - started)) s)" >> "$out/summary.txt"

  echo "== benchmarks"
  : > "$out/bench.txt"
  # Each run's last line (its result, or its error) goes to the summary too.
  bench() {
    local log
    echo "\$ flowers bench $*" >> "$out/bench.txt"
    if log="$(timeout 120 "$dir/bin/flowers" bench "$@" 2>&1)"; then
      echo "$log" | tail -n1 >> "$out/summary.txt"
    else
      echo "failed: flowers bench $*: $(echo "$log" | tail -n1)" >> "$out/summary.txt"
      status=1
    fi
    echo "$log" >> "$out/bench.txt"
  }
  # The GPU, then this machine's CPU on the same work: extraction at batch 64, and a
  # fine-tuning step as notebook 05 takes it.
  for model in mobilenet_v2_0.35_128 mobilenet_v2_1.0_224 efficientnet_b0; do
    bench --forward-only --model "$model" --batch 64 --seconds 5 --device cuda
    bench --forward-only --model "$model" --batch 64 --seconds 5 --device cpu
  done
  bench --fine-tune --model mobilenet_v2_0.35_224 --blocks 2 --batch 32 --seconds 5 --device cuda
  bench --fine-tune --model mobilenet_v2_0.35_224 --blocks 2 --batch 32 --seconds 5 --device cpu
  cat "$out/bench.txt"
  echo "== summary ($out/summary.txt)"
  cat "$out/summary.txt"
  rm -rf "$home"
  return "$status"
}

case "$verb" in
  build) build ;;
  run) run ;;
  *) usage ;;
esac
