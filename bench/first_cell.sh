#!/usr/bin/env bash
# Times what a learner waits for in the notebooks, in fresh Rust kernels (bench/first_cell.py):
#  - the cold first cell: empty evcxr cache and a new kernel folder (several minutes);
#  - the first cell after ./lab has built the kit, twice;
#  - re-running the tutorial's training cell after editing LEARNING_RATE;
#  - extracting the sample's features in a notebook against the release CLI.
# Runs offline on ../shared's sample photos and weight files. BENCH_COLD=0 skips the cold cell;
# BENCH_ONLY=notebook runs only notebook 00 top to bottom with the kernel's peak memory;
# BENCH_ONLY=start only the first cells after the kernel starts, prewarmed or not.
# Usage: bench/first_cell.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/notebook-env.sh
[ "${BENCH_ONLY:-}" = notebook ] || cargo build --release -q -p flowers_kit

source bench/offline-mirror.sh
export FLOWERS_KIT_HOME="$tmp/home"

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== $(date -u +%F), $cpu, $(nproc) cores, evcxr $EVCXR_VERSION, $(rustc --version)"
echo "== building the kit for the notebooks, as ./lab does"
source scripts/build-for-notebooks.sh
.venv/bin/python bench/first_cell.py
