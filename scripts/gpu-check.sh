#!/usr/bin/env bash
# The GPU check (issue 27), in two halves, for the day a session is lent a GPU machine: that
# machine starts bare, reaches nothing outside, and gives 15 minutes in all.
#
#   scripts/gpu-check.sh build DIR   here, without a GPU: DIR gets what the GPU machine needs,
#       under 64 MiB with the repository's files that travel beside it: the CUDA tests
#       (flowers_kit/tests/cuda.rs) and the `flowers` command line, built with `--features cuda`
#       for compute capability $FLOWERS_GPU_CHECK_CAP (default 90: an H100 or H200) with
#       NVIDIA's CUDA 13.0 compiler from PyPI, linked against CUDA 13's libraries and stripped;
#       the headers dfdx's run-time kernels include (checked by compiling those kernels with
#       NVRTC, scripts/nvrtc-check.py); the golden data the tests read; and BUILD
#       (what was built) and SHA256SUMS (every file), written last.
#   scripts/gpu-check.sh run DIR     there: refuses in one line, exit 1, where no NVIDIA GPU
#       answers; checks DIR against SHA256SUMS, the GPU and its driver against the build, and
#       finds CUDA 13's libraries (exit 2 where any of that fails); then runs the CUDA tests
#       (every family's features against TensorFlow's, training and fine-tuning against the
#       CPU's steps) and the benchmarks (extraction images/s at batch 64 and seconds per
#       fine-tuning step, the GPU's against that machine's CPU) within a deadline
#       ($FLOWERS_GPU_CHECK_SECONDS, default 480), writing tests.log, bench.txt and
#       summary.txt to $OUT (default DIR/results). Exit 1 if a test or benchmark failed.
#
# With the device tool: `scripts/gpu-check.sh build .gpu-check` here (.gpu-check is ignored),
# then run `scripts/gpu-check.sh run .gpu-check` there with `carry: [".gpu-check"]`.
set -euo pipefail
unset CDPATH
repo="$(cd "$(dirname "$0")/.." && pwd)"
usage() {
  echo "usage: scripts/gpu-check.sh build DIR | run DIR" >&2
  exit 2
}
fail() {
  echo "gpu-check: $*" >&2
  exit 2
}
(($# == 2)) || usage
verb="$1"
dir="$2"
[ -n "$dir" ] || usage
# What may travel in all (the device tool's limit), the repository's files included.
limit=$((64 * 1024 * 1024))
# The test binary's tests (its --list, checked by build and by run).
expected_tests=4

build() {
  local cap="${FLOWERS_GPU_CHECK_CAP:-90}"
  [[ $cap =~ ^[0-9]{2,3}$ ]] || fail "FLOWERS_GPU_CHECK_CAP='$cap' is not a compute capability such as 90"
  # DIR is the caller's, resolved before anything else; it is emptied, so it must be a
  # package folder, not the repository, one of its parents, or a folder of other things.
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  case "$repo/" in "$dir"/*) fail "DIR ($dir) holds the repository: name a folder of its own, such as .gpu-check" ;; esac
  local extra
  extra="$(ls -A "$dir" | grep -vxE 'bin|include|shared|results|BUILD|SHA256SUMS(\.part)?' | tr '\n' ' ' || true)"
  [ -z "$extra" ] || fail "$dir holds other things than a package ($extra): name an empty folder"
  cd "$repo"
  export FLOWERS_CUDA_PYPI=1 FLOWERS_CUDA_COMPUTE_CAP="$cap"
  # shellcheck source=scripts/cuda-env.sh
  source scripts/cuda-env.sh || fail "no CUDA compiler (scripts/cuda-env.sh)"
  # dfdx's build script takes CUDA_PATH before CUDA_ROOT: only the pinned toolkit's headers.
  unset CUDA_PATH CUDA_TOOLKIT_ROOT_DIR
  local nvcc_release
  nvcc_release="$(nvcc --version | grep -o 'release [0-9.]*, V[0-9.]*' || true)"
  [ -n "$nvcc_release" ] || fail "nvcc --version names no release"

  # CUDA's libraries to link against (cudarc 0.9 links them by name), in a venv of their own:
  # only this script needs them.
  local venv="$repo/.venv-cuda-link"
  if ! cmp -s scripts/requirements-cuda-link.txt "$venv/.requirements-installed"; then
    echo "== installing CUDA 13.0's cuBLAS, cuRAND and NVRTC from PyPI into $venv (about 570 MB)" >&2
    { [ -x "$venv/bin/pip" ] || python3 -m venv --clear "$venv"; } \
      && "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/requirements-cuda-link.txt \
      && cp scripts/requirements-cuda-link.txt "$venv/.requirements-installed" \
      || fail "installing scripts/requirements-cuda-link.txt failed"
  fi
  local libs
  libs="$("$venv/bin/python" -I -c 'import nvidia, pathlib; print(pathlib.Path(nvidia.__path__[0]) / "cu13" / "lib")')"
  # The linker's view: unversioned names for -l, each pointing at the library's soname, and a
  # stub of the driver's libcuda.so.1 (no wheel carries it) defining every driver function
  # cudarc declares, each answering CUDA_ERROR_STUB_LIBRARY (34) as NVIDIA's own stub does.
  # At run time the GPU machine's own libraries answer to those sonames.
  local link="$repo/target/gpu-check/link"
  rm -rf "$link" && mkdir -p "$link"
  local soname
  for soname in libnvrtc.so.13 libcurand.so.10 libcublas.so.13 libcublasLt.so.13; do
    [ -f "$libs/$soname" ] || fail "$libs/$soname is missing"
    ln -s "$libs/$soname" "$link/${soname%%.so.*}.so"
  done
  local metadata cudarc
  metadata="$(cargo metadata --format-version 1 --locked)" || fail "cargo metadata failed"
  cudarc="$(python3 -I -c 'import json, sys
print(next((p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"), ""))' <<<"$metadata")"
  [ -f "$cudarc" ] || fail "cudarc is not among the kit's dependencies"
  grep -o 'pub fn cu[A-Za-z0-9_]*' "$(dirname "$cudarc")/src/driver/sys.rs" | sort -u \
    | sed 's/pub fn \(.*\)/int \1(void) { return 34; }/' > "$link/libcuda-stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/libcuda-stub.c"
  ln -s libcuda.so "$link/libcuda.so.1"

  # The binaries, in a target folder of their own (other flags than the usual builds).
  local target="$repo/target/gpu-check"
  export CARGO_ENCODED_RUSTFLAGS="-L"$'\x1f'"native=$link"$'\x1f'"-C"$'\x1f'"link-arg=-Wl,-rpath-link,$link"
  local started=$SECONDS messages
  echo "== building the CUDA tests and the command line for sm_$cap (nvcc $nvcc_release)" >&2
  messages="$(cargo test --release --locked -p flowers_kit --features cuda --test cuda --no-run \
    --target-dir "$target" --message-format=json-render-diagnostics)" || fail "the CUDA tests did not build"
  cargo build -q --release --locked -p flowers_kit --features cuda --bin flowers --target-dir "$target" \
    || fail "the command line did not build"
  local seconds=$((SECONDS - started))
  # The test binary, and where dfdx's run-time kernels (NVRTC) look for their headers: the
  # build's own folders, written into the binaries (dfdx's env!("CUDA_INCLUDE_DIR") and
  # env!("OUT_DIR")); run recreates them on the GPU machine.
  local found tests nvrtc_include dfdx_out
  found="$(python3 -I -c 'import json, sys
tests = include = out = ""
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        tests = m["executable"]
    if m.get("reason") == "build-script-executed" and "/tools/dfdx" in m["package_id"]:
        out = m["out_dir"]
        include = dict(m["env"]).get("CUDA_INCLUDE_DIR", "")
print(tests, include, out, sep="\n")' <<<"$messages")"
  { read -r tests && read -r nvrtc_include && read -r dfdx_out; } <<<"$found" || true
  [ -x "$tests" ] || fail "no CUDA test binary among cargo's messages"
  [ "$nvrtc_include" = "$FLOWERS_CUDA_HOME/include" ] && [ -f "$dfdx_out/cuda_utils.cuh" ] \
    || fail "dfdx's run-time kernel headers are not the pinned toolkit's ('$nvrtc_include', '$dfdx_out')"

  rm -f "$dir/SHA256SUMS" # first: a package without it is never run
  rm -rf "$dir/bin" "$dir/shared" "$dir/include" "$dir/results" "$dir/BUILD"
  mkdir -p "$dir/bin" "$dir/include" "$dir/shared/golden/images" "$dir/shared/golden/families"
  strip -o "$dir/bin/cuda-tests" "$tests"
  strip -o "$dir/bin/flowers" "$target/release/flowers"
  local binary
  for binary in cuda-tests flowers; do
    grep -qaF "$dfdx_out" "$dir/bin/$binary" && grep -qaF "$nvrtc_include" "$dir/bin/$binary" \
      || fail "bin/$binary was built with other header folders than dfdx's build reported"
  done
  # Every library the binaries need must be glibc's or CUDA 13's, which `run` finds there (the
  # linker drops the ones nothing calls: cuRAND, today).
  local cuda_sonames=()
  for soname in $(readelf -d "$dir/bin/cuda-tests" "$dir/bin/flowers" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | sort -u); do
    case "$soname" in
      libc.so.6 | libm.so.6 | libgcc_s.so.1 | ld-linux-x86-64.so.2 | libpthread.so.0 | libdl.so.2 | librt.so.1) ;;
      libcuda.so.1 | libnvrtc.so.13 | libcurand.so.10) cuda_sonames+=("$soname") ;;
      libcublas.so.13) cuda_sonames+=("$soname" libcublasLt.so.13) ;; # cuBLAS loads cuBLASLt
      *) fail "the binaries need $soname, which a GPU machine need not have" ;;
    esac
  done
  [[ " ${cuda_sonames[*]} " == *" libcuda.so.1 "* ]] || fail "the binaries do not link CUDA's driver: not a CUDA build"
  # They start, and hold what run expects (with the stub driver, nothing touches a GPU).
  local listed
  listed="$(LD_LIBRARY_PATH="$link:$libs" "$dir/bin/cuda-tests" --list 2>/dev/null | grep -c ': test$' || true)"
  [ "$listed" = "$expected_tests" ] || fail "the CUDA test binary lists $listed tests, not $expected_tests: update expected_tests"
  LD_LIBRARY_PATH="$link:$libs" "$dir/bin/flowers" --version >/dev/null || fail "the command line does not start"
  # The headers: all of the compiler's (1.4 MB packed), and dfdx's own. Every kernel dfdx
  # compiles at run time must compile from them with NVRTC (no GPU needed for that).
  tar -C "$nvrtc_include" -cJf "$dir/include/cuda-include.tar.xz" .
  cp "$dfdx_out"/*.cuh "$dir/include/"
  local unpacked
  unpacked="$(mktemp -d)"
  put_headers "$unpacked/cuda" "$unpacked/dfdx"
  LD_LIBRARY_PATH="$libs" python3 -I scripts/nvrtc-check.py "$libs/libnvrtc.so.13" tools/dfdx/src "$cap" \
    "$unpacked/cuda" "$unpacked/dfdx" || fail "dfdx's run-time kernels do not compile from the package's headers"
  rm -rf "$unpacked"
  # The data flowers_kit/tests/cuda.rs reads (FLOWERS_TEST_SHARED): the golden photos,
  # TensorFlow's features, MobileNet V2's weights for its variants, the families' generator.
  local golden="$repo/../shared/golden" variants variant
  cp "$golden"/images/*.png "$dir/shared/golden/images/"
  variants="$(grep -o 'CUDA_VARIANTS: \[&str; [0-9]*\] = \[[^]]*\]' flowers_kit/tests/cuda.rs | grep -o '"[^"]*"' | tr -d '"' || true)"
  [ -n "$variants" ] || fail "no CUDA_VARIANTS in flowers_kit/tests/cuda.rs"
  for variant in $variants; do
    cp "$golden/mobilenet_v2_${variant}_no_top.h5" "$golden/mobilenet_v2_${variant}.safetensors" "$dir/shared/golden/"
  done
  cp "$golden"/families/* "$dir/shared/golden/families/"
  cat > "$dir/BUILD" <<EOF
commit=$(git rev-parse HEAD)$(git diff --quiet HEAD || echo +changes)
compute_capability=$cap
nvcc=$nvcc_release
cuda_sonames=${cuda_sonames[*]}
nvrtc_include=$nvrtc_include
dfdx_out_dir=$dfdx_out
tests=$expected_tests
built=$(date -u +%Y-%m-%dT%H:%MZ) in ${seconds} s on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
EOF
  # What travels: DIR, and the repository's files that git does not ignore.
  local size tree
  size="$(du -sb "$dir" | cut -f1)"
  tree="$(git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ ! -f "$f" ] || stat -c %s "$f"
  done | awk '{s += $1} END {print s + 0}')"
  echo "gpu-check: $dir holds $((size / 1024 / 1024)) MiB (bin $(du -sm "$dir/bin" | cut -f1), include $(du -sm "$dir/include" | cut -f1), shared $(du -sm "$dir/shared" | cut -f1)); with the repository's $((tree / 1024 / 1024)) MiB, $(((size + tree) / 1024 / 1024)) of the 64 MiB that may travel; built in ${seconds} s"
  ((size + tree <= limit)) || fail "over the 64 MiB that may travel to the GPU machine"
  # Last: the package is complete.
  (cd "$dir" && find bin include shared BUILD -type f -print0 | sort -z | xargs -0 sha256sum > SHA256SUMS.part \
    && mv SHA256SUMS.part SHA256SUMS)
}

# The package's headers put where dfdx's run-time kernels look for them: CUDA's into
# `$1`, dfdx's own into `$2` (replacing what a folder left by another build held).
put_headers() {
  mkdir -p "$1" "$2" || fail "cannot make $1 and $2"
  tar -C "$1" -xJf "$dir/include/cuda-include.tar.xz" 2>/dev/null \
    || python3 -I -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$dir/include/cuda-include.tar.xz" "$1" \
    || fail "cannot unpack CUDA's headers into $1"
  cp "$dir"/include/*.cuh "$2/" || fail "cannot put dfdx's headers in $2"
}

# The first folder holding `soname` among the places a GPU machine keeps CUDA's libraries.
find_library() {
  local soname="$1" d
  for d in "${library_dirs[@]}"; do
    [ -f "$d/$soname" ] && { echo "$d"; return 0; }
  done
  return 1
}

# The BUILD record's value for `key`, which must match `pattern`.
build_value() {
  local value
  value="$(sed -n "s/^$1=//p" "$dir/BUILD" | head -n1)"
  [[ $value =~ $2 ]] || fail "$dir/BUILD: '$1' is '$value'"
  echo "$value"
}

run() {
  # First: is there a GPU at all? One line, and out. (nvidia-smi prints its failures on
  # stdout, and hangs with a wedged driver.)
  local gpu
  if ! gpu="$(timeout -k 5 20 nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null | head -n1)" \
    || [[ ! $gpu =~ ^[^,]+,\ [0-9]+\.[0-9]+,\ [0-9]+(\.[0-9]+)+$ ]]; then
    local why="is not installed"
    command -v nvidia-smi >/dev/null 2>&1 && why="lists none${gpu:+: $gpu}"
    echo "gpu-check: no NVIDIA GPU answers here (nvidia-smi $why): run this on a machine with one" >&2
    exit 1
  fi
  [ -f "$dir/SHA256SUMS" ] && [ -f "$dir/BUILD" ] \
    || fail "$dir is not a package from 'scripts/gpu-check.sh build' (no SHA256SUMS or BUILD)"
  dir="$(cd "$dir" && pwd)"
  # Every file listed and matching, no file unlisted, no link.
  [ -z "$(find "$dir/bin" "$dir/include" "$dir/shared" "$dir/BUILD" ! -type f ! -type d)" ] \
    || fail "$dir holds links or special files"
  (cd "$dir" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1) \
    || fail "$dir does not match its SHA256SUMS: build it again"
  [ "$(cd "$dir" && find bin include shared BUILD -type f | sort)" = "$(cut -c67- "$dir/SHA256SUMS" | sort)" ] \
    || fail "$dir holds files its SHA256SUMS does not list"
  local built_cap gpu_cap driver sonames nvrtc_include dfdx_out
  built_cap="$(build_value compute_capability '^[0-9]{2,3}$')"
  sonames="$(build_value cuda_sonames '^lib[A-Za-z]+\.so\.[0-9]+( lib[A-Za-z]+\.so\.[0-9]+)*$')"
  nvrtc_include="$(build_value nvrtc_include '^/[^ ]+$')"
  dfdx_out="$(build_value dfdx_out_dir '^/[^ ]+$')"
  local want_tests
  want_tests="$(build_value tests '^[0-9]+$')"
  gpu_cap="$(cut -d, -f2 <<<"$gpu" | tr -d ' .')"
  driver="$(cut -d, -f3 <<<"$gpu" | tr -d ' ' | cut -d. -f1)"
  # PTX for sm_XY runs on that GPU and later ones (the driver compiles it), not on earlier;
  # CUDA 13.0's PTX needs a 580 driver or later.
  ((10#$gpu_cap >= 10#$built_cap)) || fail "this GPU ($gpu) is older than the build's sm_$built_cap: build with FLOWERS_GPU_CHECK_CAP=$gpu_cap"
  ((10#$driver >= 580)) || fail "driver $driver is older than CUDA 13.0's 580, which the build's PTX needs"
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
    done < <(timeout 20 "$py" -I -c 'import glob, sys
for p in sys.path:
    for d in sorted(glob.glob(p + "/nvidia/cu13/lib") + glob.glob(p + "/nvidia/*/lib")):
        print(d)' 2>/dev/null || true)
  done
  local path="" missing=() found resolved=()
  for soname in $sonames; do
    if found="$(find_library "$soname")"; then
      case ":$path:" in *":$found:"*) ;; *) path="${path:+$path:}$found" ;; esac
      resolved+=("$(readlink -f "$found/$soname")")
      # NVRTC loads its builtins beside itself at run time.
      if [ "$soname" = libnvrtc.so.13 ] && ! compgen -G "$found/libnvrtc-builtins.so.13*" >/dev/null; then
        missing+=("libnvrtc-builtins.so.13.* (beside $found/libnvrtc.so.13)")
      fi
    else
      missing+=("$soname")
    fi
  done
  ((${#missing[@]} == 0)) || fail "CUDA 13's ${missing[*]} not found in ${library_dirs[*]}"
  # In the order searched, so that the loader takes the files found.
  local ordered=""
  for d in "${library_dirs[@]}"; do
    case ":$path:" in *":$d:"*) case ":$ordered:" in *":$d:"*) ;; *) ordered="${ordered:+$ordered:}$d" ;; esac ;; esac
  done
  path="$ordered"
  # The folders the build wrote into the binaries for dfdx's run-time kernels' headers, filled
  # from the package every time (a folder left by another build may hold other headers).
  put_headers "$nvrtc_include" "$dfdx_out"

  export LD_LIBRARY_PATH="$path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local out="${OUT:-$dir/results}"
  mkdir -p "$out"
  home="$(mktemp -d)"
  trap 'rm -rf "$home"' EXIT
  export FLOWERS_KIT_HOME="$home" FLOWERS_TEST_SHARED="$dir/shared" RUST_BACKTRACE=1
  {
    echo "GPU: $gpu"
    cat "$dir/BUILD"
    echo "libraries: ${resolved[*]}"
  } > "$out/summary.txt"
  cat "$out/summary.txt"

  # Every step within one deadline, so that a hang cannot take the machine's whole lease.
  local deadline=$((SECONDS + ${FLOWERS_GPU_CHECK_SECONDS:-480})) status=0
  # `within CAP COMMAND...`: COMMAND, stopped at CAP seconds or the deadline, whichever is
  # first; 124 if it had no time at all.
  within() {
    local cap="$1" left=$((deadline - SECONDS))
    shift
    ((left > 5)) || return 124
    timeout -k 5 $((cap < left ? cap : left)) "$@"
  }
  echo "== the CUDA tests"
  local started=$SECONDS result
  # One test at a time: each opens the GPU, and their output stays in order.
  within 300 "$dir/bin/cuda-tests" --test-threads=1 --nocapture > "$out/tests.log" 2>&1 || status=1
  cat "$out/tests.log"
  result="$(grep -E '^test result:' "$out/tests.log" || echo 'no result line: stopped at the deadline or crashed')"
  grep -q "^test result: ok\. $want_tests passed; 0 failed" "$out/tests.log" || status=1
  echo "tests: $result ($((SECONDS - started)) s)" >> "$out/summary.txt"

  echo "== benchmarks"
  : > "$out/bench.txt"
  # Each run's last line (its result, or its error) goes to the summary too.
  bench() {
    local log
    echo "\$ flowers bench $*" >> "$out/bench.txt"
    if log="$(within 40 "$dir/bin/flowers" bench "$@" 2>&1)"; then
      echo "$log" | tail -n1 >> "$out/summary.txt"
    else
      local last
      last="$(echo "$log" | tail -n1)"
      echo "failed: flowers bench $*: ${last:-stopped at the deadline}" >> "$out/summary.txt"
      status=1
    fi
    echo "$log" >> "$out/bench.txt"
  }
  # The GPU, then this machine's CPU on the same work: extraction at batch 64, and a
  # fine-tuning step as notebook 05 takes it.
  local model
  for model in mobilenet_v2_0.35_128 mobilenet_v2_1.0_224 efficientnet_b0; do
    bench --forward-only --model "$model" --batch 64 --seconds 5 --device cuda
    bench --forward-only --model "$model" --batch 64 --seconds 5 --device cpu
  done
  bench --fine-tune --model mobilenet_v2_0.35_224 --blocks 2 --batch 32 --seconds 5 --device cuda
  bench --fine-tune --model mobilenet_v2_0.35_224 --blocks 2 --batch 32 --seconds 5 --device cpu
  cat "$out/bench.txt"
  echo "== summary ($out/summary.txt)"
  cat "$out/summary.txt"
  return "$status"
}

case "$verb" in
  build) build ;;
  run) run ;;
  *) usage ;;
esac
