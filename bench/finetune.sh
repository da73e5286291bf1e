#!/usr/bin/env bash
# Fine-tuning step against PyTorch, in one sitting on this machine: seconds per step of the
# issue's three cases (MobileNet V2 0.35/224 and 1.0/224 with 2 blocks, EfficientNet-B0 with
# 1), batch 32, Adam, 2 threads, on a fixed random batch of activations at the cut —
# `flowers bench --fine-tune` (native backward pass, and dfdx's tape for reference) and
# bench/torch_finetune.py (the same blocks, batch norm folded, PyTorch from PyPI, several GB).
# This VM's neighbours move single runs by 10–40 %: each figure is the best of ROUNDS runs,
# the engines alternating.
# Usage: bench/finetune.sh [SECONDS_PER_MEASUREMENT]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-5}"
rounds="${ROUNDS:-3}"
threads=2
[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
.venv-bench/bin/pip install -q --disable-pip-version-check "torch==2.15.0" "numpy==2.4.6"
cargo build --release -q -p flowers_kit --bin flowers
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores;" \
  "AVX-512: $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no); $(date -u +%F)"
flowers() { target/release/flowers bench --fine-tune --model "$1" --blocks "$2" --batch 32 \
  --seconds "$seconds" --backend "$3" | sed -E 's/.*: ([0-9.]+) s per.*/\1/'; }
best() { tr ' ' '\n' | grep . | sort -g | head -1; }
printf '%-24s %6s %10s %10s %10s %8s\n' model blocks native dfdx pytorch "torch÷native"
for case in "mobilenet_v2_0.35_224 2" "mobilenet_v2_1.0_224 2" "efficientnet_b0 1"; do
  set -- $case
  native="" torch="" dfdx=""
  for _ in $(seq "$rounds"); do
    native+=" $(flowers "$1" "$2" native)"
    torch+=" $(.venv-bench/bin/python bench/torch_finetune.py "$1" "$2" 32 $threads "$seconds" 2>/dev/null)"
  done
  dfdx="$(flowers "$1" "$2" dfdx)"
  n=$(echo "$native" | best) t=$(echo "$torch" | best)
  printf '%-24s %6s %10s %10s %10s %8.2f\n' "$1" "$2" "$n" "$dfdx" "$t" "$(echo "$t / $n" | bc -l)"
done
