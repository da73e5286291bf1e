#!/usr/bin/env bash
# Peer benchmark: flowers_kit's MobileNet V2 forward pass against ONNX Runtime, on this
# machine, in one run. Random weights (throughput does not depend on them), 2 threads each.
# Usage: bench/peers.sh [SECONDS_PER_MEASUREMENT]   (installs its venv into .venv-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-5}"
threads=2

if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
fi
.venv-bench/bin/pip install -q --disable-pip-version-check \
  "onnxruntime==1.31.1" "onnx==1.23.2" "numpy==2.3.5"
cargo build --release -q -p flowers_kit

echo "MobileNet V2 forward, random weights, $threads threads, $(date -u +%Y-%m-%d), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-22s %6s %14s %14s %8s\n' model batch "flowers img/s" "ORT img/s" ratio
for config in 0.35_128 1.0_224; do
  alpha="${config%_*}"; res="${config#*_}"
  for batch in 1 16 64; do
    ours=$(RAYON_NUM_THREADS=$threads ./target/release/flowers bench --forward-only \
      --model "mobilenet_v2_$config" --batch "$batch" --seconds "$seconds" \
      | sed -n 's/.*: \([0-9.]*\) images\/s.*/\1/p')
    ort=$(OMP_NUM_THREADS=$threads .venv-bench/bin/python bench/ort_mobilenet.py \
      "$alpha" "$res" "$batch" "$threads" "$seconds")
    ratio=$(python3 -c "print(f'{$ours / $ort:.3f}')")
    printf '%-22s %6s %14s %14s %8s\n' "mobilenet_v2_$config" "$batch" "$ours" "$ort" "$ratio"
  done
done
