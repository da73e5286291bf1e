# Sourced by ./lab and scripts/class-setup (after scripts/notebook-env.sh), in the repository:
# builds what the notebooks' kernels use, skipping what is up to date.
#  - the `flowers` command line, through which the notebooks' build of the kit downloads;
#  - the kit in a kernel slot, copied to the template new slots start from, and the stamp that
#    lets kernels load it at start (scripts/prewarm.py, scripts/evcxr-kernel).

# The notebooks' build of the kit has no HTTP client (it would double what evcxr's type checker
# loads in every kernel): it downloads by running the `flowers` command line, built here.
echo "== building the flowers command line (downloads for the notebooks; minutes the first time)"
cargo build -q -p flowers_kit --bin flowers

# Build the kit for the notebooks now, once, rather than in front of the learner's first cell.
# Done again only when the kit, the lock file, the kernel script, the notebooks' `:dep` line,
# evcxr or Rust changed.
kernels="${FLOWERS_KIT_KERNELS_DIR:-.lab/kernels}"
stamp="$kernels/prewarmed"
dep_line="$(grep -m1 -o ':dep flowers_kit = {[^}]*}' notebooks/00_transfer_learning_flowers.ipynb || true)"
evcxr_version="evcxr $EVCXR_VERSION, $(rustc --version), $dep_line"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$evcxr_version" ] || [ ! -d "$kernels/template/target" ] \
  || [ -n "$(find flowers_kit Cargo.lock scripts/evcxr-kernel -newer "$stamp" -not -path '*/target/*' -print -quit)" ]; then
  echo "== building flowers_kit for the notebooks (a one-off of several minutes on 2 cores; a line every 10 s)"
  if ! .venv/bin/python scripts/prewarm.py "$evcxr_version"; then
    echo "== could not build it now; the notebooks' first cell will build it instead" >&2
  fi
fi
