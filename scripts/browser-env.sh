# Sourced by ./test: Debian's Chromium and playwright-core for the browser check.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing Debian's chromium (for the JupyterLab browser check)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
if [ ! -d "$repo/tests/browser/node_modules/playwright-core" ]; then
  echo "== installing playwright-core into tests/browser"
  (cd "$repo/tests/browser" && npm install --no-audit --no-fund --silent)
fi
