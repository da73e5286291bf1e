#!/usr/bin/env bash
# Every family against ONNX Runtime and OpenVINO (f32, the better of its latency and
# throughput modes) running the same prepared network (bench/ort_families.py builds it from
# `flowers graph MODEL`; bench/openvino_families.py compiles that graph), random weights,
# forward only, 2 threads each.
# This VM's neighbours move any one measurement by 10–40 %, so each engine is measured
# ROUNDS times (default 3), alternating with the others, and the best of each is compared
# with the better peer.
# Usage: bench/families.sh [SECONDS_PER_MEASUREMENT] [MODEL…]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-4}"
shift || true
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  models=(mobilenet_v2_0.35_128 mobilenet_v2_1.0_224 mobilenet_v3_large efficientnet_b0 nasnet_mobile resnet50_v2 inception_v3)
fi
rounds="${ROUNDS:-3}"
threads=2
if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
fi
.venv-bench/bin/pip install -q --disable-pip-version-check "onnxruntime==1.32.0" "onnx==1.23.2" "numpy==2.4.6" \
  "openvino==2026.4.0"
cargo build --release -q -p flowers_kit
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
graph="$(mktemp)"
trap 'rm -f "$graph"' EXIT
echo "forward only, images/s, $threads threads, $(date -u +%Y-%m-%d): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "CPU flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o -w -E 'avx512f|avx2|fma' | sort -u | xargs)"
printf '%-24s %5s %10s %10s %10s %8s\n' model batch flowers ORT OpenVINO "vs best"
best() { python3 -c "print(max($1, $2))"; }
for model in "${models[@]}"; do
  ./target/release/flowers graph "$model" >"$graph"
  for batch in 1 16; do
    ours=0
    ort=0
    ov=0
    for _ in $(seq "$rounds"); do
      ours=$(best "$ours" "$(./target/release/flowers bench --forward-only --model "$model" --batch "$batch" --seconds "$seconds" | grep -o '[0-9.]* images/s' | cut -d' ' -f1)")
      ort=$(best "$ort" "$(.venv-bench/bin/python bench/ort_families.py "$graph" "$batch" "$threads" "$seconds")")
      ov=$(best "$ov" "$(.venv-bench/bin/python bench/openvino_families.py "$graph" "$batch" "$threads" "$seconds")")
    done
    printf '%-24s %5s %10s %10s %10s %8s\n' "$model" "$batch" "$ours" "$ort" "$ov" "$(python3 -c "print(f'{$ours / max($ort, $ov):.2f}')")"
  done
done
