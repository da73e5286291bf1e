#!/usr/bin/env bash
# Peer benchmark, in one sitting on this machine: flowers_kit's MobileNet V2 against ONNX
# Runtime, OpenVINO (f32 inference precision set explicitly, the better of its latency and
# throughput modes) and LiteRT (Keras' MobileNetV2 converted to a float32 .tflite by
# TensorFlow, XNNPACK), installed from PyPI (LiteRT and TensorFlow into .venv-litert, 1.6 GB;
# PEERS_LITERT=0 skips them), with random weights (throughput does not depend on them),
# 2 threads each. PEERS_TORCH=1 adds PyTorch (a wheel of several GB).
#   - forward only, 0.35/128 and 1.0/224, batch 1, 16 and 64;
#   - peak resident memory of each engine's process at 1.0/224, batch 16;
#   - end to end over the 750 sample photos: decode + resize + forward, the peers in batches of
#     16, the kit one photo per core on the thread that decoded it.
# Usage: bench/peers.sh [SECONDS_PER_MEASUREMENT] [PHOTO_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-5}"
photos="${2:-../shared/data/flower_photos_sample}"
threads=2
torch="${PEERS_TORCH:-0}"
litert="${PEERS_LITERT:-1}"
# This VM's neighbours move single runs by 10–40 %: every figure (forward and end to end) is
# the best of ROUNDS runs, the engines alternating.
rounds="${ROUNDS:-3}"

if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
fi
.venv-bench/bin/pip install -q --disable-pip-version-check \
  "onnxruntime==1.32.0" "onnx==1.23.2" "numpy==2.4.6" "pillow==13.0.0" "openvino==2026.4.0"
if [ "$torch" = 1 ]; then
  .venv-bench/bin/pip install -q --disable-pip-version-check "torch==2.15.0" "torchvision==0.29.2"
fi
if [ "$litert" = 1 ]; then
  [ -x .venv-litert/bin/python ] || python3 -m venv .venv-litert
  .venv-litert/bin/pip install -q --disable-pip-version-check \
    "tensorflow-cpu==2.21.0" "ai-edge-litert==2.3.0" "numpy==2.4.6" "pillow==13.0.0"
fi
cargo build --release -q -p flowers_kit
py=.venv-bench/bin/python
# LiteRT's column: its images/s, or "-" when skipped.
lite() { if [ "$litert" = 1 ]; then TF_CPP_MIN_LOG_LEVEL=3 .venv-litert/bin/python bench/litert_mobilenet.py "$@" 2>/dev/null | tail -1; else echo -; fi; }
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
# The larger of two measurements ("-": not run).
best() { python3 -c "import sys; v = [float(x) for x in sys.argv[1:] if x != '-']; print(max(v) if v else '-')" "$@"; }
# ours ÷ the best peer that ran.
ratio() { python3 -c "import sys; v = [float(x) for x in sys.argv[2:] if x != '-']; print(f'{float(sys.argv[1]) / max(v):.2f}')" "$@"; }
flowers() { ./target/release/flowers bench --forward-only --model "mobilenet_v2_$1" --batch "$2" \
  --seconds "$seconds" | sed -n 's/.*: \([0-9.]*\) images\/s.*/\1/p'; }
peer() { $py "bench/$1_mobilenet.py" "$2" "$3" "$4" "$threads" "$seconds"; }

echo "MobileNet V2, random weights, $threads threads, $(date -u +%Y-%m-%d), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "CPU flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o -w -E 'avx512f|avx2|fma' | sort -u | xargs)"
echo
echo "forward only, images/s"
printf '%-22s %5s %10s %10s %10s %10s %10s\n' model batch flowers ORT OpenVINO LiteRT "vs best"
for config in 0.35_128 1.0_224; do
  alpha="${config%_*}"; res="${config#*_}"
  for batch in 1 16 64; do
    ours=0 ort=0 ov=0 tfl=-
    for _ in $(seq "$rounds"); do
      ours=$(best "$ours" "$(flowers "$config" "$batch")")
      ort=$(best "$ort" "$(peer ort "$alpha" "$res" "$batch")")
      ov=$(best "$ov" "$(peer openvino "$alpha" "$res" "$batch")")
      tfl=$(best "$tfl" "$(lite "$alpha" "$res" "$batch" "$threads" "$seconds")")
    done
    printf '%-22s %5s %10s %10s %10s %10s %10s\n' "mobilenet_v2_$config" "$batch" "$ours" "$ort" "$ov" "$tfl" \
      "$(ratio "$ours" "$ort" "$ov" "$tfl")"
    if [ "$torch" = 1 ]; then
      echo "  PyTorch: $($py bench/torch_mobilenet.py "$alpha" "$res" "$batch" "$threads" "$seconds")"
    fi
  done
done
echo
echo "peak resident memory, 1.0/224, batch 16 (MiB)"
rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1 | awk '{printf "%.0f", $1 / 1024}'; }
echo "flowers $(rss ./target/release/flowers bench --forward-only --model mobilenet_v2_1.0_224 --batch 16 --seconds 2)," \
  "ORT $(rss "$py" bench/ort_mobilenet.py 1.0 224 16 "$threads" 2)," \
  "OpenVINO $(rss "$py" bench/openvino_mobilenet.py 1.0 224 16 "$threads" 2)," \
  "LiteRT $([ "$litert" = 1 ] && rss .venv-litert/bin/python bench/litert_mobilenet.py 1.0 224 16 "$threads" 2 || echo -)"
echo
echo "end to end over $(find "$photos" -type f | wc -l) photos (decode + resize + forward), images/s"
printf '%-22s %10s %10s %10s %10s %10s\n' model flowers ORT OpenVINO LiteRT "vs best"
for config in 0.35_128 1.0_224; do
  alpha="${config%_*}"; res="${config#*_}"
  ours=-; ort=-; ov=-; tfl=-
  for _ in $(seq "$rounds"); do
    ours=$(best "$ours" "$(./target/release/flowers bench --extract --seconds 0.3 --model "mobilenet_v2_$config" \
      --data "$photos" | sed -n 's/^cold: .*(\([0-9.]*\) images\/s.*/\1/p')")
    ort=$(best "$ort" "$($py bench/end_to_end.py ort "$alpha" "$res" "$threads" "$photos")")
    ov=$(best "$ov" "$($py bench/end_to_end.py openvino "$alpha" "$res" "$threads" "$photos")")
    tfl=$(best "$tfl" "$(lite --end-to-end "$alpha" "$res" "$threads" "$photos")")
  done
  printf '%-22s %10s %10s %10s %10s %10s\n' "mobilenet_v2_$config" "$ours" "$ort" "$ov" "$tfl" \
    "$(ratio "$ours" "$ort" "$ov" "$tfl")"
done
