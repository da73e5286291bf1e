#!/usr/bin/env bash
# A class on this machine (bench/classroom.py): BENCH_LEARNERS (8) learners open notebook 00
# BENCH_START_GAP (5) seconds apart, each in a fresh Rust kernel with their own cache, read for
# BENCH_READ (20) seconds and run it top to bottom; reported per learner and for the machine.
# Set up as scripts/class-setup sets up a class: the kit built once with the kernel template,
# and a shared cache filled with the photos, the weights and the features of the tutorial's model.
# Runs offline on ../shared's sample photos and weight files. Usage: bench/classroom.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/notebook-env.sh
source scripts/build-for-notebooks.sh
source bench/offline-mirror.sh

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== $(date -u +%F), $cpu, $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GB, evcxr $EVCXR_VERSION"
shared="$tmp/shared-cache"
echo "== the shared cache, as scripts/class-setup fills it"
FLOWERS_KIT_HOME="$shared" target/debug/flowers download
mapfile -t photos < <(find "$shared/datasets" -type f \( -iname '*.jpg' -o -iname '*.png' \) | sort)
FLOWERS_KIT_HOME="$shared" target/debug/flowers features --model mobilenet_v2_0.35_128 \
  --out "$tmp/features.safetensors" "${photos[@]}"
export FLOWERS_KIT_SHARED_CACHE="$shared"
.venv/bin/python bench/classroom.py
echo "== disk: $(du -sh "${FLOWERS_KIT_KERNELS_DIR:-.lab/kernels}/template" | cut -f1) per kernel slot (a copy of the template), $(du -sh "$tmp/learner-0" | cut -f1) in a learner's own cache"
