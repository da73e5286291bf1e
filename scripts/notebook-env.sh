# Sourced by ./lab and ./test: makes the Rust notebook environment ready, skipping what is done.
#  - evcxr_jupyter 0.22.0 as patched in tools/evcxr (kernels share one rust-analyzer), built with
#    its pinned lock file into .lab/evcxr-jupyter, plus rust-src for its type inference;
#  - a Python venv in ./.venv with pinned JupyterLab and the notebook test runner;
#  - the Rust kernel registered into that venv (not system-wide), run by scripts/evcxr-kernel;
#  - an evcxr config folder in ./.lab/evcxr.
# Exports JUPYTER_PATH, EVCXR_CONFIG_DIR, EVCXR_JUPYTER and PATH for the commands that follow.

EVCXR_VERSION="0.22.0 (tools/evcxr: shared rust-analyzer)"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"

export PATH="$HOME/.cargo/bin:$PATH"
# Rebuilt when tools/evcxr changes (its own target folder keeps the build incremental); the
# stamp records the sources it was built from.
evcxr_root="$repo/.lab/evcxr-jupyter"
export EVCXR_JUPYTER="$evcxr_root/bin/evcxr_jupyter"
evcxr_sources="$(cd "$repo/tools/evcxr" && find Cargo.toml Cargo.lock evcxr evcxr_jupyter -type f -print0 \
  | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
if [ ! -x "$EVCXR_JUPYTER" ] || [ "$(cat "$evcxr_root/sources" 2>/dev/null)" != "$evcxr_sources" ]; then
  echo "== building evcxr_jupyter $EVCXR_VERSION (a one-off compile of ~15 minutes on 2 cores)"
  cargo install --locked --quiet --force --path "$repo/tools/evcxr/evcxr_jupyter" --root "$evcxr_root" \
    --target-dir "$repo/tools/evcxr/target"
  printf '%s\n' "$evcxr_sources" > "$evcxr_root/sources"
fi
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
  rustup component add rust-src
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  python3 -m venv "$venv"
fi
stamp="$venv/.requirements-installed"
if ! cmp -s "$repo/scripts/requirements-notebooks.txt" "$stamp"; then
  echo "== installing JupyterLab into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$repo/scripts/requirements-notebooks.txt"
  cp "$repo/scripts/requirements-notebooks.txt" "$stamp"
fi

# Kernel specs in <venv>/share/jupyter/kernels are found by this venv's Jupyter only.
export JUPYTER_PATH="$venv/share/jupyter"
# The kernel runs through scripts/evcxr-kernel, which gives each kernel a reusable slot in
# .lab/kernels (evcxr alone rebuilt the kit per kernel and left ~700 MB in /tmp each time).
kernel="$JUPYTER_PATH/kernels/rust/kernel.json"
if [ ! -f "$kernel" ] || ! grep -q "$repo/scripts/evcxr-kernel" "$kernel" \
  || ! grep -q "$EVCXR_JUPYTER" "$kernel"; then
  "$EVCXR_JUPYTER" --install >/dev/null
  "$venv/bin/python" - "$kernel" "$repo/scripts/evcxr-kernel" "$EVCXR_JUPYTER" <<'PY'
import json, sys
path, wrapper, evcxr = sys.argv[1:]
spec = json.load(open(path))
spec["argv"] = [wrapper] + spec["argv"][1:]
spec["env"] = {"EVCXR_JUPYTER": evcxr}
json.dump(spec, open(path, "w"), indent=2)
PY
fi

# JupyterLab 4 only renders cells near the viewport by default; render them all, so that
# scrolling a long notebook never shows empty outputs (and the browser test sees every plot).
settings="$venv/share/jupyter/lab/settings"
mkdir -p "$settings"
# No "news" pop-up either: it asks about fetching from the internet and covers the notebook.
printf '{\n  "@jupyterlab/notebook-extension:tracker": { "windowingMode": "none" },\n  "@jupyterlab/apputils-extension:notification": { "fetchNews": "false" }\n}\n' > "$settings/overrides.json"

export EVCXR_CONFIG_DIR="$repo/.lab/evcxr"
mkdir -p "$EVCXR_CONFIG_DIR"
# No evcxr compilation cache (`:cache`): a crate it restores keeps the build records of the folder
# it was first built in, so when that folder is gone (another kernels folder, a test's) cargo
# rebuilds it, and with it the kit, at a kernel's start. New kernel slots copy the template
# instead (scripts/evcxr-kernel). The optimisation levels are set in scripts/evcxr-kernel (a
# cargo configuration evcxr's builds read), and init.evcxr says so for whoever opens it.
cat > "$EVCXR_CONFIG_DIR/init.evcxr" <<'EVCXR'
// Written by scripts/notebook-env.sh. Optimisation levels come from .lab/kernels/.cargo/config.toml
// (scripts/evcxr-kernel): the kit and the code it runs per photo or step at opt-level 3, as the
// release CLI; other dependencies at 0, for a short first build; your cells at evcxr's opt-level 2
// with overflow checks.
EVCXR
