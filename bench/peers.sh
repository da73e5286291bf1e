#!/usr/bin/env bash
# Peer benchmark, in one run on this machine: flowers_kit's MobileNet V2 against ONNX Runtime
# and PyTorch (installed from PyPI into .venv-bench; PyTorch's wheel is large), with random
# weights (throughput does not depend on them), 2 threads each:
#   - forward only, 0.35/128 and 1.0/224, batch 1, 16 and 64;
#   - end to end over the 750 sample photos (decode + resize + forward, batch 16).
# Usage: bench/peers.sh [SECONDS_PER_MEASUREMENT] [PHOTO_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-5}"
photos="${2:-../shared/data/flower_photos_sample}"
threads=2

if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
fi
.venv-bench/bin/pip install -q --disable-pip-version-check \
  "onnxruntime==1.31.1" "onnx==1.23.2" "numpy==2.3.5" "pillow==13.0.0" \
  "torch==2.15.0" "torchvision==0.29.2"
cargo build --release -q -p flowers_kit
py=.venv-bench/bin/python
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

echo "MobileNet V2, random weights, $threads threads, $(date -u +%Y-%m-%d), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "forward only, images/s"
printf '%-22s %5s %10s %10s %10s %8s %8s\n' model batch flowers ORT PyTorch "vs ORT" "vs PT"
for config in 0.35_128 1.0_224; do
  alpha="${config%_*}"; res="${config#*_}"
  for batch in 1 16 64; do
    ours=$(./target/release/flowers bench --forward-only --model "mobilenet_v2_$config" \
      --batch "$batch" --seconds "$seconds" | sed -n 's/.*: \([0-9.]*\) images\/s.*/\1/p')
    ort=$($py bench/ort_mobilenet.py "$alpha" "$res" "$batch" "$threads" "$seconds")
    pt=$($py bench/torch_mobilenet.py "$alpha" "$res" "$batch" "$threads" "$seconds")
    printf '%-22s %5s %10s %10s %10s %8s %8s\n' "mobilenet_v2_$config" "$batch" "$ours" "$ort" "$pt" \
      "$(ratio "$ours" "$ort")" "$(ratio "$ours" "$pt")"
  done
done
echo
echo "end to end over $(find "$photos" -type f | wc -l) photos (decode + resize + forward), images/s"
printf '%-22s %10s %10s %10s %8s %8s\n' model flowers ORT PyTorch "vs ORT" "vs PT"
for config in 0.35_128 1.0_224; do
  alpha="${config%_*}"; res="${config#*_}"
  ours=$(./target/release/flowers bench --extract --model "mobilenet_v2_$config" --data "$photos" \
    | sed -n 's/^cold: .*(\([0-9.]*\) images\/s.*/\1/p')
  ort=$($py bench/end_to_end.py ort "$alpha" "$res" "$threads" "$photos")
  pt=$($py bench/end_to_end.py torch "$alpha" "$res" "$threads" "$photos")
  printf '%-22s %10s %10s %10s %8s %8s\n' "mobilenet_v2_$config" "$ours" "$ort" "$pt" \
    "$(ratio "$ours" "$ort")" "$(ratio "$ours" "$pt")"
done
