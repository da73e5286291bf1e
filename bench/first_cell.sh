#!/usr/bin/env bash
# Times what a learner waits for in the notebooks, in fresh Rust kernels (bench/first_cell.py):
#  - the cold first cell: empty evcxr cache and a new kernel folder (several minutes);
#  - the first cell after ./lab has built the kit, twice;
#  - re-running the tutorial's training cell after editing LEARNING_RATE;
#  - extracting the sample's features in a notebook against the release CLI.
# Runs offline on ../shared's sample photos and weight files. BENCH_COLD=0 skips the cold cell.
# Usage: bench/first_cell.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/notebook-env.sh
cargo build --release -q -p flowers_kit

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The sample packed like the real archive, and the weight files laid out like Keras Applications.
tar -czf "$tmp/flower_photos.tgz" -C ../shared/data --transform 's,^flower_photos_sample,flower_photos,' \
  flower_photos_sample
mkdir -p "$tmp/weights/mobilenet_v2"
for h5 in ../shared/golden/mobilenet_v2_*_no_top.h5; do
  variant="$(basename "$h5" _no_top.h5)"
  variant="${variant#mobilenet_v2_}"
  ln -s "$(realpath "$h5")" \
    "$tmp/weights/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_${variant}_no_top.h5"
done
export FLOWERS_DATA_URL="$tmp/flower_photos.tgz" FLOWERS_WEIGHTS_URL="$tmp/weights"
export FLOWERS_KIT_HOME="$tmp/home" BENCH_TMP="$tmp"

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== $(date -u +%F), $cpu, $(nproc) cores, evcxr $EVCXR_VERSION, $(rustc --version)"
echo "== building the kit for the notebooks, as ./lab does"
.venv/bin/python scripts/prewarm.py
.venv/bin/python bench/first_cell.py
